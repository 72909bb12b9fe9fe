package cache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"golang.org/x/sync/errgroup"

	"github.com/storefs/storefs/store"
)

// Target is the store a Substituter imports into: the store itself or the
// daemon that owns it.
type Target interface {
	Info(p string) (*store.Info, error)
	Import(ctx context.Context, r io.Reader, o store.ImportOptions) (string, error)
}

// Preparer is a Target that can stage an import and make it valid later
// (the store itself, not the daemon): a Substituter then imports each NAR
// as it downloads, with no spool, and commits the closure once every item
// of it is prepared.
type Preparer interface {
	Target
	PrepareImport(ctx context.Context, r io.Reader, o store.ImportOptions) (*store.PreparedImport, error)
}

// SubstituteOptions configure a Substituter.
type SubstituteOptions struct {
	URL         string // http://, https:// or file:// (the cache's root)
	StoreDir    string // the target store's store dir; the cache's must equal it
	TrustedKeys []signature.PublicKey
	NoCheckSigs bool // accept narinfos without a valid signature by a trusted key

	Jobs         int           // downloads at once (default 4)
	Attempts     int           // tries of a transient failure (default 5)
	Backoff      time.Duration // wait before the first retry, doubled after each (default 500ms)
	StallTimeout time.Duration // a download with no data for this long is retried (default 30s)
	// SpoolDir holds the downloaded NARs (decompressed) until they are
	// imported, for a Target that is not a Preparer; default
	// os.TempDir(). A run needs room for its closure.
	SpoolDir   string
	HTTPClient *http.Client // default: one with connect and header timeouts
	Logger     *slog.Logger
}

// Substituter fetches items from one binary cache.
type Substituter struct {
	o     SubstituteOptions
	f     fetcher
	log   *slog.Logger
	ready sync.Once
	cerr  error
}

// NewSubstituter checks the options and the URL (nothing is fetched yet).
func NewSubstituter(o SubstituteOptions) (*Substituter, error) {
	if o.Jobs <= 0 {
		o.Jobs = 4
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.Backoff <= 0 {
		o.Backoff = 500 * time.Millisecond
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.SpoolDir == "" {
		o.SpoolDir = os.TempDir()
	}
	if o.HTTPClient == nil {
		// No ResponseHeaderTimeout: the stall watch of every attempt
		// (watchStall) starts before the request and covers a server that
		// sends no headers, with the error that says so; a second timer
		// of the same length would race it.
		o.HTTPClient = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 30 * time.Second,
			MaxIdleConnsPerHost: o.Jobs + 2,
		}}
	}
	if !o.NoCheckSigs && len(o.TrustedKeys) == 0 {
		return nil, errors.New("no trusted keys: give the cache's public key, or do not check signatures")
	}
	f, err := newFetcher(o.URL, o.HTTPClient)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Substituter{o: o, f: f, log: log}, nil
}

// get fetches a small file of the cache whole, with retries.
func (s *Substituter) get(ctx context.Context, rel string) ([]byte, error) {
	var b []byte
	err := retry(ctx, s.o.Attempts, s.o.Backoff, s.o.StallTimeout, s.f.String()+"/"+rel, func(ctx context.Context, sr *stallReader) error {
		rc, err := s.f.open(ctx, rel)
		if err != nil {
			return err
		}
		defer rc.Close()
		sr.attach(rc)
		b, err = io.ReadAll(io.LimitReader(sr, 8<<20))
		return err
	})
	return b, err
}

// checkCacheInfo fetches nix-cache-info (once) and checks its StoreDir.
func (s *Substituter) checkCacheInfo(ctx context.Context) error {
	s.ready.Do(func() {
		b, err := s.get(ctx, "nix-cache-info")
		if errors.Is(err, errNotFound) {
			s.cerr = fmt.Errorf("%s is not a binary cache: it has no nix-cache-info", s.f)
			return
		}
		if err != nil {
			s.cerr = fmt.Errorf("binary cache %s: %w", s.f, err)
			return
		}
		ci, err := ParseCacheInfo(bytesReader(b))
		if err != nil {
			s.cerr = fmt.Errorf("binary cache %s: %w", s.f, err)
			return
		}
		if ci.StoreDir != s.o.StoreDir {
			s.cerr = fmt.Errorf("binary cache %s is for store dir %s, not this store's %s", s.f, ci.StoreDir, s.o.StoreDir)
		}
	})
	return s.cerr
}

// NarInfo fetches and checks the narinfo of p: it must name p, and (unless
// signatures are not checked) carry a valid signature by a trusted key.
func (s *Substituter) NarInfo(ctx context.Context, p string) (*narinfo.NarInfo, error) {
	if err := s.checkCacheInfo(ctx); err != nil {
		return nil, err
	}
	b, err := s.get(ctx, hashPart(p)+".narinfo")
	if err != nil {
		if errors.Is(err, errNotFound) {
			return nil, fmt.Errorf("%s: not in the binary cache %s", p, s.f)
		}
		return nil, err
	}
	ni, err := ParseNarInfo(bytesReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", p, s.f, err)
	}
	if ni.StorePath != p {
		return nil, fmt.Errorf("%s: the binary cache's narinfo is for %s", p, ni.StorePath)
	}
	if !s.o.NoCheckSigs && !Verified(s.o.StoreDir, ni, s.o.TrustedKeys) {
		return nil, fmt.Errorf("%s: no valid signature by a trusted key in the binary cache's narinfo (%d signature(s)); refused", p, len(ni.Signatures))
	}
	return ni, nil
}

// Substitute fetches paths and their closures from the cache into t,
// skipping paths t holds already, and returns the paths it imported,
// references first. Nothing is made valid before every narinfo and NAR of
// the missing closure is fetched and checked (see the package doc).
func (s *Substituter) Substitute(ctx context.Context, t Target, paths []string) ([]string, error) {
	for _, p := range paths {
		base, rel, err := store.SplitStorePath(s.o.StoreDir, p)
		if err != nil || rel != "" || p != s.o.StoreDir+"/"+base {
			return nil, fmt.Errorf("%q is not a store path of %s", p, s.o.StoreDir)
		}
	}
	infos, err := s.closure(ctx, t, paths)
	if err != nil {
		return nil, err
	}
	order, err := topoOrder(s.o.StoreDir, infos)
	if err != nil {
		return nil, err
	}
	if len(order) == 0 {
		return nil, nil
	}
	if p, ok := t.(Preparer); ok {
		return s.substitutePrepared(ctx, p, infos, order)
	}
	spool, err := os.MkdirTemp(s.o.SpoolDir, "storefs-substitute-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(spool)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.o.Jobs)
	for _, p := range order {
		ni := infos[p]
		g.Go(func() error { return s.download(gctx, ni, filepath.Join(spool, hashPart(p)+".nar")) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var done []string
	for _, p := range order {
		if err := s.importOne(ctx, t, infos[p], filepath.Join(spool, hashPart(p)+".nar")); err != nil {
			return done, err
		}
		done = append(done, p)
	}
	return done, nil
}

// substitutePrepared downloads every NAR of order straight into t's
// staging area (at most Jobs at a time), each item's import overlapping its
// download, and commits them, references first, once all are prepared.
func (s *Substituter) substitutePrepared(ctx context.Context, t Preparer, infos map[string]*narinfo.NarInfo, order []string) ([]string, error) {
	prepared := make([]*store.PreparedImport, len(order))
	defer func() {
		for _, pi := range prepared {
			if pi != nil {
				pi.Discard()
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.o.Jobs)
	for i, p := range order {
		g.Go(func() (err error) {
			prepared[i], err = s.prepare(gctx, t, infos[p])
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var done []string
	for i, p := range order {
		_, err := prepared[i].Commit(ctx)
		prepared[i] = nil
		if errors.Is(err, store.ErrContentCollected) {
			// A collection ran while the closure downloaded and took a
			// blob this item found present: fetch it again, once.
			s.log.Info("fetching again: a collection removed content it relied on", "path", p)
			var pi *store.PreparedImport
			if pi, err = s.prepare(ctx, t, infos[p]); err == nil {
				_, err = pi.Commit(ctx)
			}
		}
		if err != nil {
			return done, fmt.Errorf("%s: %w", p, err)
		}
		done = append(done, p)
		s.log.Debug("imported", "path", p)
	}
	return done, nil
}

// closure fetches the narinfos of paths and of their references, level by
// level (each level in parallel), leaving out paths t holds already.
func (s *Substituter) closure(ctx context.Context, t Target, paths []string) (map[string]*narinfo.NarInfo, error) {
	infos := map[string]*narinfo.NarInfo{}
	seen := map[string]bool{}
	level := slices.Clone(paths)
	for len(level) > 0 {
		var want []string
		for _, p := range level {
			if seen[p] {
				continue
			}
			seen[p] = true
			if _, err := t.Info(p); err == nil {
				continue // valid, so is its closure
			} else if !errors.Is(err, store.ErrNotValid) {
				return nil, err
			}
			want = append(want, p)
		}
		got := make([]*narinfo.NarInfo, len(want))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(s.o.Jobs)
		for i, p := range want {
			g.Go(func() (err error) {
				got[i], err = s.NarInfo(gctx, p)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		level = nil
		for i, p := range want {
			infos[p] = got[i]
			for _, r := range got[i].References {
				level = append(level, s.o.StoreDir+"/"+r)
			}
		}
	}
	return infos, nil
}

// topoOrder orders the items references first (self-references aside); a
// cycle is an error.
func topoOrder(storeDir string, infos map[string]*narinfo.NarInfo) ([]string, error) {
	keys := make([]string, 0, len(infos))
	for p := range infos {
		keys = append(keys, p)
	}
	slices.Sort(keys)
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []string
	var visit func(p string) error
	visit = func(p string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("the binary cache's references form a cycle through %s", p)
		}
		state[p] = visiting
		for _, r := range infos[p].References {
			rp := storeDir + "/" + r
			if rp == p || infos[rp] == nil {
				continue
			}
			if err := visit(rp); err != nil {
				return err
			}
		}
		state[p] = done
		out = append(out, p)
		return nil
	}
	for _, p := range keys {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// hashCount hashes and counts what is written to it.
type hashCount struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func newHashCount() *hashCount { return &hashCount{h: sha256.New()} }

func (c *hashCount) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func (c *hashCount) sum() (s [32]byte) { copy(s[:], c.h.Sum(nil)); return s }

// fetchNAR runs consume on ni's NAR as it downloads (decompressed), then
// reads the rest of the file and checks its FileSize and FileHash (when the
// narinfo gives them). Transient failures start over: consume then runs
// again on a new download. When consume fails, a corrupt compressed stream
// or a FileSize or FileHash mismatch is the error, if there is one: it
// names the cause (a truncated or corrupt download) better than what the
// NAR reader made of it.
func (s *Substituter) fetchNAR(ctx context.Context, ni *narinfo.NarInfo, consume func(ctx context.Context, nar io.Reader) error) error {
	what := ni.StorePath + ": " + s.f.String() + "/" + ni.URL
	return retry(ctx, s.o.Attempts, s.o.Backoff, s.o.StallTimeout, what, func(ctx context.Context, sr *stallReader) error {
		rc, err := s.f.open(ctx, ni.URL)
		if err != nil {
			if errors.Is(err, errNotFound) {
				return fmt.Errorf("%s: the NAR is missing from the binary cache", what)
			}
			return err
		}
		defer rc.Close()
		sr.attach(rc)
		file := newHashCount()
		body := io.TeeReader(bufio.NewReaderSize(sr, 1<<16), file)
		dec, err := decompressor(body, ni.Compression)
		if err != nil {
			if isTransient(err) {
				return err
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		defer dec.Close()
		de := &errRecorder{r: dec}
		cerr := consume(ctx, de)
		_, rerr := io.Copy(io.Discard, body) // the rest of the file, for FileHash
		if cerr != nil && isTransient(cerr) {
			return cerr
		}
		if rerr != nil {
			if isTransient(rerr) {
				return rerr
			}
			return fmt.Errorf("%s: %w", what, rerr)
		}
		if de.err != nil {
			if isTransient(de.err) {
				return de.err
			}
			return fmt.Errorf("%s: corrupt %s data: %w", what, ni.Compression, de.err)
		}
		if ni.FileSize != 0 && uint64(file.n) != ni.FileSize {
			return fmt.Errorf("%s: file size mismatch: got %d bytes, the narinfo says %d (truncated or corrupt download); refused", what, file.n, ni.FileSize)
		}
		if ni.FileHash != nil {
			got := file.sum()
			if !slices.Equal(got[:], ni.FileHash.Digest()) {
				return fmt.Errorf("%s: file hash mismatch: got sha256:%s, the narinfo says %s (corrupt download); refused", what, nixbase32.EncodeToString(got[:]), ni.FileHash)
			}
		}
		if cerr != nil {
			return fmt.Errorf("%s: %w", what, cerr)
		}
		s.log.Debug("downloaded", "path", ni.StorePath, "url", ni.URL, "fileSize", file.n)
		return nil
	})
}

// errRecorder keeps the first error other than EOF its reader returned (a
// decompressor's, or a transient read error below it).
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// download fetches ni's NAR into spool, decompressed, checking it against
// NarSize and NarHash (and the file against FileSize and FileHash).
func (s *Substituter) download(ctx context.Context, ni *narinfo.NarInfo, spool string) error {
	return s.fetchNAR(ctx, ni, func(ctx context.Context, r io.Reader) error {
		out, err := os.Create(spool)
		if err != nil {
			return err
		}
		defer out.Close()
		nar := newHashCount()
		bw := bufio.NewWriterSize(out, 1<<16)
		if _, err := io.Copy(io.MultiWriter(bw, nar), r); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		if uint64(nar.n) != ni.NarSize {
			return fmt.Errorf("NAR size mismatch: got %d bytes, the narinfo says %d; refused", nar.n, ni.NarSize)
		}
		if got := nar.sum(); !slices.Equal(got[:], ni.NarHash.Digest()) {
			return fmt.Errorf("NAR hash mismatch: got %s, the narinfo says %s; refused", store.NixHash(got), ni.NarHash)
		}
		return nil
	})
}

// prepare fetches ni's NAR straight into t's staging area (t checks
// NarHash and NarSize), for Commit once the whole closure is prepared.
func (s *Substituter) prepare(ctx context.Context, t Preparer, ni *narinfo.NarInfo) (*store.PreparedImport, error) {
	var pi *store.PreparedImport
	err := s.fetchNAR(ctx, ni, func(ctx context.Context, r io.Reader) error {
		if pi != nil { // an earlier attempt's, which the file then failed
			pi.Discard()
			pi = nil
		}
		var err error
		pi, err = t.PrepareImport(ctx, bufio.NewReaderSize(r, 1<<16), s.importOptions(ni))
		return err
	})
	if err != nil {
		if pi != nil {
			pi.Discard()
		}
		return nil, err
	}
	return pi, nil
}

// importOne imports a downloaded NAR under its path, with its references,
// deriver and content address; the store checks NarHash and NarSize again.
func (s *Substituter) importOne(ctx context.Context, t Target, ni *narinfo.NarInfo, spool string) error {
	f, err := os.Open(spool)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := t.Import(ctx, bufio.NewReaderSize(f, 1<<16), s.importOptions(ni)); err != nil {
		return fmt.Errorf("%s: %w", ni.StorePath, err)
	}
	os.Remove(spool)
	s.log.Debug("imported", "path", ni.StorePath)
	return nil
}

// importOptions import ni's NAR under its path, with its references,
// deriver and content address, checking NarHash and NarSize.
func (s *Substituter) importOptions(ni *narinfo.NarInfo) store.ImportOptions {
	o := store.ImportOptions{
		Path:    ni.StorePath,
		NarHash: ni.NarHash.String(),
		NarSize: int64(ni.NarSize),
		CA:      ni.CA,
	}
	for _, r := range ni.References {
		o.Refs = append(o.Refs, s.o.StoreDir+"/"+r)
	}
	if ni.Deriver != "" {
		o.Deriver = s.o.StoreDir + "/" + path.Base(ni.Deriver)
	}
	return o
}
