package fs_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/store"
)

// TestLive: a path registered while mounted appears at once, even right
// after a failed lookup of its name; and an open file stays readable when
// its blob is deleted.
func TestLive(t *testing.T) {
	requireFUSE(t)
	s := newStore(t)
	ctx := context.Background()
	srcDir := scratchDir(t)
	first := srcTree{t, filepath.Join(srcDir, "first")}
	first.file("a", []byte("a\n"), 0o644)
	firstPath, err := s.Add(ctx, first.dir, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := mountStore(t, s) // wires s.OnChange(root.Changed)

	t.Run("NewItemAppears", func(t *testing.T) {
		late := srcTree{t, filepath.Join(srcDir, "late")}
		late.file("bin/tool", []byte("#!/bin/sh\necho late\n"), 0o755)
		late.file("share/doc", []byte("documentation\n"), 0o644)
		bare := filepath.Join(srcDir, "late-file")
		must(t, os.WriteFile(bare, []byte("a late bare file\n"), 0o644))

		for _, src := range []string{late.dir, bare} {
			p, err := s.PathOf(ctx, src, store.AddOptions{})
			if err != nil {
				t.Fatal(err)
			}
			base := filepath.Base(p)
			mp := m.path(base)
			// look it up first, twice: a cached miss would hide it below
			for range 2 {
				if _, err := os.Lstat(mp); errnoOf(err) != syscall.ENOENT {
					t.Fatalf("before Add: lstat %s: %v, want ENOENT", mp, err)
				}
			}
			if _, err := os.ReadDir(m.dir); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Add(ctx, src, store.AddOptions{}); err != nil || got != p {
				t.Fatalf("Add(%s) = %s, %v; want %s", src, got, err, p)
			}
			// at once: no retry, no sleep
			if _, err := os.Lstat(mp); err != nil {
				t.Fatalf("right after Add: lstat %s: %v", mp, err)
			}
			if !slices.Contains(sortedNames(t, m.dir), base) {
				t.Errorf("root listing lacks %s right after Add", base)
			}
			compareTree(t, src, mp)
		}
		// the item added before the mount is still there
		if _, err := os.Lstat(m.path(filepath.Base(firstPath), "a")); err != nil {
			t.Error(err)
		}
	})

	// What the collector does to a dead path (store.deleteDead): invalidate
	// it in the registry, then tell the mount through OnChange. Entries in
	// the root have long kernel timeouts, so only the notification makes
	// it disappear.
	t.Run("RemovedItemDisappears", func(t *testing.T) {
		gone := srcTree{t, filepath.Join(srcDir, "gone")}
		gone.file("f", []byte("going away\n"), 0o644)
		gone.file("sub/g", []byte("g\n"), 0o644)
		never := filepath.Join(srcDir, "never-looked-up")
		must(t, os.WriteFile(never, []byte("never looked up\n"), 0o644))
		var bases []string
		for _, src := range []string{gone.dir, never} {
			p, err := s.Add(ctx, src, store.AddOptions{})
			if err != nil {
				t.Fatal(err)
			}
			bases = append(bases, filepath.Base(p))
		}
		// cache the first one's entries in the kernel, and hold a file open
		if _, err := os.Lstat(m.path(bases[0], "sub", "g")); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(m.path(bases[0], "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()

		removed, err := s.Registry().Invalidate(bases)
		if err != nil || len(removed) != 2 {
			t.Fatalf("Invalidate: %v, %v", removed, err)
		}
		m.root.Changed(nil, removed) // as s.onChange(nil, removed)

		for _, b := range bases {
			var err error
			if !eventually(5*time.Second, func() bool {
				_, err = os.Lstat(m.path(b))
				return errnoOf(err) == syscall.ENOENT
			}) {
				t.Errorf("%s still there after its removal: lstat: %v", b, err)
			}
			if slices.Contains(sortedNames(t, m.dir), b) {
				t.Errorf("root listing still has %s", b)
			}
		}
		if _, err := os.Lstat(m.path(bases[0], "sub", "g")); err == nil {
			t.Errorf("a path below a removed item still resolves")
		}
		if b, err := io.ReadAll(f); err != nil || string(b) != "going away\n" {
			t.Errorf("reading a file held open across its item's removal: %q, %v", b, err)
		}
	})

	modes := []bool{false}
	if os.Geteuid() == 0 {
		modes = append(modes, true)
	}
	for i, pt := range modes {
		name := "OpenFileOutlivesBlob/splice"
		if pt {
			name = "OpenFileOutlivesBlob/passthrough"
		}
		mm := m
		if pt != (os.Geteuid() == 0) {
			mm = mountStoreWith(t, s, t.TempDir(), pt)
		}
		t.Run(name, func(t *testing.T) { openFileOutlivesBlob(t, s, mm, srcDir, uint64(7+i)) })
	}
}

func openFileOutlivesBlob(t *testing.T, s *store.Store, m *mount, srcDir string, seed uint64) {
	ctx := context.Background()
	{
		content := randBytes(seed, 3<<20+5) // unique to this test
		held := srcTree{t, filepath.Join(srcDir, fmt.Sprint("held-", seed))}
		held.file("data", content, 0o644)
		p, err := s.Add(ctx, held.dir, store.AddOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(m.path(filepath.Base(p), "data"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if got, err := io.ReadAll(f); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("first read: %d bytes, %v", len(got), err)
		}

		blob := blobPath(t, s, filepath.Join(held.dir, "data"))
		if err := os.Remove(blob); err != nil {
			t.Fatalf("removing the blob: %v", err)
		}
		if _, err := os.Lstat(blob); errnoOf(err) != syscall.ENOENT {
			t.Fatalf("blob still there: %v", err)
		}
		// Drop the file's cached pages (this file's only: no global
		// drop_caches), so that the reads below reach the blob.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatalf("fadvise(DONTNEED): %v", err)
		}
		got := make([]byte, len(content))
		for _, off := range []int{len(content) - 4097, 1 << 20, 12345, 0} { // backwards, in pieces
			end := len(content)
			if off != len(content)-4097 {
				end = off + 65536
			}
			n, err := f.ReadAt(got[off:end], int64(off))
			if err != nil && err != io.EOF {
				t.Fatalf("read after the blob was removed, at %d: %v", off, err)
			}
			if !bytes.Equal(got[off:off+n], content[off:off+n]) || n != end-off {
				t.Fatalf("read after the blob was removed, at %d: %d bytes, wrong", off, n)
			}
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if all, err := io.ReadAll(f); err != nil || !bytes.Equal(all, content) {
			t.Fatalf("full read after the blob was removed: %d bytes, %v", len(all), err)
		}
	}
}
