package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/store"
)

// backend is what the verbs use: the store itself (embedded) or the daemon
// that owns it. Both give the same results and the same errors.
type backend interface {
	Add(ctx context.Context, src string, o store.AddOptions) (string, error)
	PathOf(ctx context.Context, src string, o store.AddOptions) (string, error)
	Import(ctx context.Context, r io.Reader, o store.ImportOptions) (string, error)
	ImportBundle(ctx context.Context, r io.Reader, p *store.Progress) ([]string, error)
	Export(ctx context.Context, w io.Writer, p string) error
	ExportBundle(ctx context.Context, w io.Writer, paths []string) error
	List(fn func(path string) bool) error
	Info(p string) (*store.Info, error)
	LookupHashPart(hash32 string) (string, error)
	StoreDir() string
	Closure(paths []string) ([]string, error)
	Cat(ctx context.Context, w io.Writer, p string) error
	Verify(ctx context.Context, o store.VerifyOptions) (*store.VerifyReport, error)
	Optimise(ctx context.Context) (cas.DedupStats, error)
	Roots() ([]store.Root, error)
	AddRoot(ctx context.Context, name, p string, indirect bool) (store.Root, error)
	RemoveRoot(name string) error
	CollectGarbage(ctx context.Context, o store.GCOptions) (*store.GCResult, error)
	Close() error
}

var (
	_ backend = (*store.Store)(nil)
	_ backend = (*daemon.Client)(nil)
)

// open returns the daemon serving the store, if one does, else the store
// opened here. --no-daemon insists on the latter, which is only safe when
// no daemon owns the registry.
func (g *globals) open() (backend, error) {
	state := g.stateDir()
	c, err := daemon.Dial(state)
	switch {
	case err == nil && g.noDaemon:
		pid := c.StoreInfo().PID
		c.Close()
		return nil, fmt.Errorf("a storefs daemon (pid %d) owns this store's registry; drop --no-daemon to go through it", pid)
	case err == nil:
		g.log.Debug("using the daemon", "socket", daemon.SocketPath(state))
		return c, nil
	case !errors.Is(err, daemon.ErrNoDaemon):
		return nil, err
	}
	return store.Open(state, g.options())
}
