package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Temp roots protect paths a process is still working on (an item between
// its rename into the store and its registration, an item being
// optimised) from a concurrent collector. They follow the guix-daemon
// protocol (reference: Guix/Nix temp roots):
//
//   - each process has one file, <state>/temproots/<pid>, holding
//     NUL-terminated base names, and keeps a shared flock on it for its life;
//   - the file is created under a shared flock on <state>/gc.lock, which a
//     collector holds exclusively, so no new temp-root file appears while a
//     collection reads them; a file that is not empty when we have just
//     created it was marked stale by a collector ("d") and is made again;
//   - adding a root takes the file's lock exclusively (waiting while a
//     collector holds it shared to read it), appends, and goes back to shared.
//
// A collector reads a file under a shared lock; an owner that died has no
// lock left, so its file can be removed.
type tempRoots struct {
	mu sync.Mutex
	f  *os.File
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

func (s *Store) openTempRoots() (*os.File, error) {
	if err := os.MkdirAll(s.tempRootDir(), 0o755); err != nil {
		return nil, err
	}
	name := filepath.Join(s.tempRootDir(), strconv.Itoa(os.Getpid()))
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

// addTempRoot records base as a temp root of this process until it ends
// (or the store is closed).
func (s *Store) addTempRoot(base string) error {
	s.temp.mu.Lock()
	defer s.temp.mu.Unlock()
	if s.temp.f == nil {
		f, err := s.openTempRoots()
		if err != nil {
			return err
		}
		s.temp.f = f
	}
	f := s.temp.f
	if err := flock(f, unix.LOCK_EX); err != nil {
		return fmt.Errorf("temp root %s: %w", base, err)
	}
	_, err := f.Write([]byte(base + "\x00"))
	if lerr := flock(f, unix.LOCK_SH); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("temp root %s: %w", base, err)
	}
	return nil
}

// TempRoots returns the base names this process holds as temp roots.
func (s *Store) TempRoots() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(s.tempRootDir(), strconv.Itoa(os.Getpid())))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		out = append(out, string(b[:i]))
		if i < len(b) {
			i++
		}
		b = b[i:]
	}
	return out, nil
}

func (s *Store) closeTempRoots() {
	s.temp.mu.Lock()
	defer s.temp.mu.Unlock()
	if s.temp.f != nil {
		os.Remove(s.temp.f.Name())
		s.temp.f.Close()
		s.temp.f = nil
	}
}
