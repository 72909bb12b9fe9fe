package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/storefs/storefs/store"
)

// smallFS mounts a tmpfs of size bytes (root only) and unmounts it at
// cleanup, whether the test passed or not.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a full disk is simulated with a small tmpfs, which only root can mount")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs to fill: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// An add or an import that runs out of space fails with ENOSPC, leaves the
// store exactly as it was (no staged leftovers, no new content) and sound,
// and the store takes a smaller item afterwards. Every mode.
func TestFullDisk(t *testing.T) {
	src := t.TempDir()
	_, v2, _ := versions(t, src) // 12 MiB
	small := filepath.Join(src, "small")
	if err := os.MkdirAll(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(small, "f"), pseudoRandom(3, 300<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	nar := dump(t, v2)
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			fsdir := smallFS(t, "6m")
			s, err := store.Init(filepath.Join(fsdir, "state"), store.InitOptions{Mode: mode}, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			first := add(t, s, small, store.AddOptions{})
			before := snapshot(t, s.StateDir())
			if _, err := s.Add(ctx, v2, store.AddOptions{}); !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("add on a full disk: %v; want ENOSPC", err)
			}
			if _, err := s.Import(ctx, bytes.NewReader(nar), store.ImportOptions{Name: "pkg"}); !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("import on a full disk: %v; want ENOSPC", err)
			}
			if after := snapshot(t, s.StateDir()); !slices.Equal(before, after) {
				t.Errorf("state dir changed:\nbefore %v\nafter  %v", before, after)
			}
			checkSound(t, s)
			if got := export(t, s, first); !slices.Equal(got, dump(t, small)) {
				t.Error("the item added before no longer exports as its source")
			}
			if err := os.WriteFile(filepath.Join(small, "g"), []byte("more\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(filepath.Join(small, "g"))
			add(t, s, small, store.AddOptions{})
			checkSound(t, s)
		})
	}
}
