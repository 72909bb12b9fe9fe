package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// An add makes its content durable with one syncfs of the state dir, not a
// sync per file or directory, and does it before the path becomes valid;
// concurrent adds share syncs. (The registration is one registry
// transaction, which bbolt commits with its own fdatasync.)
func TestAddSyncsOncePerItem(t *testing.T) {
	tree := func(dir string, files int) string {
		for i := range files {
			p := filepath.Join(dir, fmt.Sprintf("d%02d", i%20), fmt.Sprintf("f%03d", i))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, fmt.Appendf(nil, "%s %d\n", dir, i), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	base := t.TempDir()
	srcs := []string{tree(filepath.Join(base, "a"), 300), tree(filepath.Join(base, "b"), 200), tree(filepath.Join(base, "c"), 100)}
	for _, mode := range []Mode{ModeBlob, ModeChunk, ModeDisk} {
		t.Run(string(mode), func(t *testing.T) {
			s, err := Init(filepath.Join(t.TempDir(), "state"), InitOptions{Mode: mode}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			var syncs atomic.Int64
			var mu sync.Mutex
			var watched []string // paths that must not be valid yet when a sync starts
			testHookSyncfs = func(hs *Store) {
				if hs != s {
					return
				}
				syncs.Add(1)
				mu.Lock()
				defer mu.Unlock()
				for _, p := range watched {
					if ok, err := s.reg.IsValid(filepath.Base(p)); err != nil || ok {
						t.Errorf("%s is valid (%v) before its content was synced", p, err)
					}
				}
			}
			defer func() { testHookSyncfs = nil }()

			want, err := s.PathOf(ctx, srcs[0], AddOptions{})
			if err != nil {
				t.Fatal(err)
			}
			watched = []string{want}
			p, err := s.Add(ctx, srcs[0], AddOptions{})
			if err != nil || p != want {
				t.Fatalf("Add = %s, %v; want %s", p, err, want)
			}
			if n := syncs.Load(); n != 1 {
				t.Errorf("adding 300 files synced %d times, want 1", n)
			}
			watched = nil

			// Already valid: nothing written, nothing synced.
			syncs.Store(0)
			if _, err := s.Add(ctx, srcs[0], AddOptions{}); err != nil {
				t.Fatal(err)
			}
			if n := syncs.Load(); n != 0 {
				t.Errorf("adding a valid path again synced %d times, want 0", n)
			}

			// Two adds at once: at most one sync each (they may share one).
			syncs.Store(0)
			var wg sync.WaitGroup
			for _, src := range srcs[1:] {
				wg.Go(func() {
					if _, err := s.Add(ctx, src, AddOptions{}); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if n := syncs.Load(); n < 1 || n > 2 {
				t.Errorf("two concurrent adds synced %d times, want 1 or 2", n)
			}
		})
	}
}

// An add starts its content's writeback in the background once the content
// is written (before its commit and its durability sync), every mode; Close
// waits for a writeback still running.
func TestAddStartsWriteback(t *testing.T) {
	src := t.TempDir()
	for i := range 50 {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d", i)), fmt.Appendf(nil, "%d\n", i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []Mode{ModeBlob, ModeChunk, ModeDisk} {
		t.Run(string(mode), func(t *testing.T) {
			s, err := Init(filepath.Join(t.TempDir(), "state"), InitOptions{Mode: mode}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var started, finished atomic.Int64
			testHookWriteback = func(hs *Store) {
				if hs == s {
					started.Add(1)
					time.Sleep(100 * time.Millisecond) // still running when Close comes
					finished.Add(1)
				}
			}
			defer func() { testHookWriteback = nil }()
			if _, err := s.Add(context.Background(), src, AddOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if started.Load() != 1 || finished.Load() != 1 {
				t.Errorf("writebacks started %d, finished by Close %d; want 1, 1", started.Load(), finished.Load())
			}
		})
	}
}
