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

	"github.com/storefs/storefs/cas"
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

	// With handles (OpenFiles), an open file holds its blob's descriptor:
	// it stays readable whoever deletes the blob. (Without them, a
	// collection keeps it: TestOpenFileOutlivesCollection.)
	for i, rp := range readPaths()[1:] {
		mm := mountStoreWith(t, s, t.TempDir(), rp)
		t.Run("OpenFileOutlivesBlob/"+string(rp), func(t *testing.T) { openFileOutlivesBlob(t, s, mm, srcDir, uint64(7+i)) })
	}
}

// TestOpenFileOutlivesCollection: on a mount whose files the kernel opens
// without a request (the default), a file held open stays readable after
// its item is collected: the mount reports every file the kernel knows in
// use, and the collection (run in the process that owns the store, as the
// daemon socket of a mount makes it) keeps its blob; once the file is
// closed and its entry gone, the kernel forgets it and the next collection
// frees the blob.
func TestOpenFileOutlivesCollection(t *testing.T) {
	requireFUSE(t)
	s := newStore(t)
	ctx := context.Background()
	content := randBytes(31, 2<<20+11)
	src := srcTree{t, filepath.Join(t.TempDir(), "held")}
	src.file("data", content, 0o644)
	src.file("other", []byte("looked up, never opened\n"), 0o644)
	tr := s.NewTempRoots()
	p, err := s.Add(store.WithTempRoots(ctx, tr), src.dir, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close() // nothing roots the item now
	m := mountStoreWith(t, s, t.TempDir(), noOpen)
	f, err := os.Open(m.path(filepath.Base(p), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 100)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(m.path(filepath.Base(p), "other")); err != nil {
		t.Fatal(err)
	}
	blob := blobPath(t, s, filepath.Join(src.dir, "data"))
	res, err := s.CollectGarbage(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || !exists(blob) {
		t.Fatalf("gc with the file open: deleted %v, %d blobs, blob kept: %v; want the item only", res.Deleted, res.BlobsRemoved, exists(blob))
	}
	// Drop the file's cached pages, so that the reads below reach storefs.
	must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
	got := make([]byte, len(content))
	for _, off := range []int{len(content) - 70000, 1 << 20, 0} {
		n, err := f.ReadAt(got[off:min(off+300000, len(content))], int64(off))
		if (err != nil && err != io.EOF) || !bytes.Equal(got[off:off+n], content[off:off+n]) {
			t.Fatalf("read at %d after the collection: %d bytes, %v", off, n, err)
		}
	}
	if !eventually(5*time.Second, func() bool { return !exists(m.path(filepath.Base(p))) }) {
		t.Errorf("the collected item still resolves")
	}
	f.Close()
	key, err := cas.ParseKey(filepath.Base(blob))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := cas.ParseKey(filepath.Base(blobPath(t, s, filepath.Join(src.dir, "other"))))
	if err != nil {
		t.Fatal(err)
	}
	// Both: the kernel may forget the looked-up "other" after the closed
	// "data" (a collection in between would keep its blob).
	if !eventually(5*time.Second, func() bool {
		u := m.root.InUse()
		return !slices.Contains(u, key) && !slices.Contains(u, otherKey)
	}) {
		t.Fatal("the files of a collected item are still reported in use after the close")
	}
	res, err = s.CollectGarbage(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsRemoved != 2 || exists(blob) {
		t.Errorf("gc after the close: %d blobs removed, blob still there: %v; want 2 (data and other), gone", res.BlobsRemoved, exists(blob))
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
