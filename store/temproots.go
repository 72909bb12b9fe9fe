package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Temp roots protect paths that are still being worked on (an item between
// its rename into the store and its registration, an item being optimised)
// from a concurrent collector. They follow the guix-daemon protocol:
//
//   - each set of temp roots has one file, <state>/temproots/<pid>[-<n>],
//     holding NUL-terminated base names; its owner keeps a shared flock on it
//     for as long as the set lives;
//   - the file is created under a shared flock on <state>/gc.lock, which a
//     collector holds exclusively, so no new temp-root file appears while a
//     collection reads them; a file found non-empty right after creating it
//     was marked stale by a collector and is made again;
//   - adding a root takes the file's lock exclusively (waiting while a
//     collector holds it shared to read it), appends, and goes back to shared.
//
// A collector reads a file under a shared lock; a file whose owner died has
// no lock left and can be removed. A process has one default set that lives
// as long as its Store; a daemon gives each request (or client session) a set
// of its own through WithTempRoots, closed when the request ends, so temp
// roots never outlive their client.
type TempRoots struct {
	s    *Store
	name string

	mu     sync.Mutex
	f      *os.File
	roots  []string
	closed bool
}

var tempRootSeq atomic.Int64

// NewTempRoots starts a set of temp roots (its file is created on the first
// Add). Close it when the work it protects is over.
func (s *Store) NewTempRoots() *TempRoots {
	return &TempRoots{s: s, name: fmt.Sprintf("%d-%d", os.Getpid(), tempRootSeq.Add(1))}
}

type tempRootsKey struct{}

// WithTempRoots makes the store operations run with ctx record their temp
// roots in t instead of the process's default set.
func WithTempRoots(ctx context.Context, t *TempRoots) context.Context {
	return context.WithValue(ctx, tempRootsKey{}, t)
}

func (s *Store) tempRoots(ctx context.Context) *TempRoots {
	if ctx != nil {
		if t, ok := ctx.Value(tempRootsKey{}).(*TempRoots); ok {
			return t
		}
	}
	return s.temp
}

func (s *Store) tempRootDir() string { return filepath.Join(s.state, "temproots") }

// GCLockPath is the lock a collection holds exclusively.
func (s *Store) GCLockPath() string { return filepath.Join(s.state, "gc.lock") }

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

func (t *TempRoots) open() (*os.File, error) {
	s := t.s
	if err := os.MkdirAll(s.tempRootDir(), 0o755); err != nil {
		return nil, err
	}
	name := filepath.Join(s.tempRootDir(), t.name)
	for {
		gc, err := os.OpenFile(s.GCLockPath(), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("temp roots: %w", err)
		}
		if err := flock(gc, unix.LOCK_SH); err != nil {
			gc.Close()
			return nil, fmt.Errorf("temp roots: lock %s: %w", gc.Name(), err)
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			gc.Close()
			return nil, err
		}
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
		gc.Close() // releases the shared gc.lock
		if err != nil {
			return nil, fmt.Errorf("temp roots: %w", err)
		}
		if err := flock(f, unix.LOCK_SH); err != nil {
			f.Close()
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if st.Size() == 0 {
			return f, nil
		}
		f.Close() // a collector marked it stale meanwhile: start again
	}
}

// Add records base as a temp root of the set.
func (t *TempRoots) Add(base string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("temp roots: set already closed")
	}
	if t.f == nil {
		f, err := t.open()
		if err != nil {
			return err
		}
		t.f = f
	}
	if err := flock(t.f, unix.LOCK_EX); err != nil {
		return fmt.Errorf("temp root %s: %w", base, err)
	}
	_, err := t.f.Write([]byte(base + "\x00"))
	if lerr := flock(t.f, unix.LOCK_SH); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("temp root %s: %w", base, err)
	}
	t.roots = append(t.roots, base)
	return nil
}

// Roots returns the base names in the set.
func (t *TempRoots) Roots() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.roots...)
}

// Close releases the set: its file is removed.
func (t *TempRoots) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	if t.f == nil {
		return nil
	}
	err := os.Remove(t.f.Name())
	t.f.Close()
	t.f = nil
	return err
}

// addTempRoot records base in the temp roots of ctx (or the process's).
func (s *Store) addTempRoot(ctx context.Context, base string) error {
	return s.tempRoots(ctx).Add(base)
}

// TempRoots returns the base names of the process's default set.
func (s *Store) TempRoots() []string { return s.temp.Roots() }
