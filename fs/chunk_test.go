package fs_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// A chunk-mode store mounts like a blob-mode one: every file reads as its
// source, at random offsets too, and the NAR of the mounted item is the NAR
// of the source. A small pread of a large file opens only the chunks around
// it: with every other chunk removed, it still reads.
func TestChunkModeMount(t *testing.T) {
	requireFUSE(t)
	s := newStoreMode(t, store.ModeChunk)
	src := filepath.Join(t.TempDir(), "pkg")
	w := srcTree{t, src}
	big := randBytes(11, 24<<20+5)
	w.file("lib/libbig.so", big, 0o755)
	w.file("lib/libmid.so", randBytes(12, 200<<10), 0o644)
	w.file("lib/edge", randBytes(13, chunk.Threshold), 0o644)
	w.file("lib/under", randBytes(14, chunk.Threshold-1), 0o644)
	w.file("README", []byte("hello\n"), 0o644)
	w.file("same/libbig.so", big, 0o755)
	p, err := s.Add(context.Background(), src, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := mountStore(t, s)
	mp := m.path(filepath.Base(p))
	compareTree(t, src, mp)
	if !bytes.Equal(narOf(t, mp), narOf(t, src)) {
		t.Fatal("NAR of the mounted item differs from the NAR of its source")
	}
	// duplicates are one inode, as in blob mode
	if a, b := lstat(t, filepath.Join(mp, "lib/libbig.so")), lstat(t, filepath.Join(mp, "same/libbig.so")); a.Ino != b.Ino {
		t.Errorf("identical chunked files have inodes %d and %d", a.Ino, b.Ino)
	}

	f, err := os.Open(filepath.Join(mp, "lib/libbig.so"))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		off := r.Int64N(int64(len(big)))
		buf := make([]byte, 1+r.IntN(300<<10))
		n, _ := f.ReadAt(buf, off)
		if want := big[off:min(off+int64(len(buf)), int64(len(big)))]; !bytes.Equal(buf[:n], want) {
			t.Fatalf("pread(%d bytes at %d): %d bytes, not the source's", len(buf), off, n)
		}
	}
	f.Close()

	// Keep only the chunks within 2 MiB of an offset near the middle of a
	// second copy's content (a file the kernel has not cached), then read
	// there through a new descriptor.
	other := randBytes(15, 24<<20)
	w2 := srcTree{t, filepath.Join(t.TempDir(), "other")}
	w2.file("blob", other, 0o644)
	p2, err := s.Add(context.Background(), w2.dir, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := nar.HashFile(false, int64(len(other)), bytes.NewReader(other))
	if err != nil {
		t.Fatal(err)
	}
	refs, err := s.Chunks().ReadManifest(cas.Key(key), int64(len(other)))
	if err != nil {
		t.Fatal(err)
	}
	const at = 13<<20 + 777
	var pos int64
	removed := 0
	for _, ref := range refs {
		if pos+int64(ref.Size) < at-2<<20 || pos > at+2<<20 {
			must(t, os.Remove(s.Chunks().Chunks.Path(ref.Key)))
			removed++
		}
		pos += int64(ref.Size)
	}
	if removed < len(refs)/2 {
		t.Fatalf("removed only %d of %d chunks", removed, len(refs))
	}
	g, err := os.Open(filepath.Join(m.path(filepath.Base(p2)), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	buf := make([]byte, 4096)
	if n, err := g.ReadAt(buf, at); err != nil || !bytes.Equal(buf[:n], other[at:at+4096]) {
		t.Fatalf("pread in the middle with far chunks removed: %d bytes, %v", n, err)
	}
	// Put the chunks back: the store verifies clean again.
	pos = 0
	for _, ref := range refs {
		if cp := s.Chunks().Chunks.Path(ref.Key); !exists(cp) {
			must(t, os.WriteFile(cp, other[pos:pos+int64(ref.Size)], 0o444))
		}
		pos += int64(ref.Size)
	}
	rep, err := s.Verify(context.Background(), store.VerifyOptions{Contents: true})
	if err != nil || len(rep.Problems) != 0 {
		t.Errorf("verify: %v %v", rep, err)
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// A chunked file held open stays readable after its item is collected, as a
// blob does: the mount reports it in use, and the collection (run in the
// process that owns the store, as the daemon socket of a mount makes it)
// keeps its manifest and chunks until it is closed; the next one frees them.
func TestChunkModeOpenFileOutlivesCollection(t *testing.T) {
	requireFUSE(t)
	s := newStoreMode(t, store.ModeChunk)
	ctx := context.Background()
	content := randBytes(21, 5<<20+3)
	src := srcTree{t, filepath.Join(t.TempDir(), "held")}
	src.file("data", content, 0o644)
	tr := s.NewTempRoots()
	p, err := s.Add(store.WithTempRoots(ctx, tr), src.dir, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close() // nothing roots the item now
	m := mountStore(t, s)
	f, err := os.Open(m.path(filepath.Base(p), "data"))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 100)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	res, err := s.CollectGarbage(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || res.ChunksRemoved != 0 || res.ManifestsRemoved != 0 {
		t.Fatalf("gc with the file open: deleted %v, %d chunks, %d manifests; want the item only", res.Deleted, res.ChunksRemoved, res.ManifestsRemoved)
	}
	must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
	got := make([]byte, len(content))
	for _, off := range []int{len(content) - 70000, 3 << 20, 0} {
		n, err := f.ReadAt(got[off:min(off+300000, len(content))], int64(off))
		if (err != nil && err != io.EOF) || !bytes.Equal(got[off:off+n], content[off:off+n]) {
			t.Fatalf("read at %d after the collection: %d bytes, %v", off, n, err)
		}
	}
	f.Close()
	// the kernel releases the handle asynchronously
	if !eventually(5*time.Second, func() bool { return len(m.root.InUse()) == 0 }) {
		t.Fatal("the closed file is still reported in use")
	}
	res, err = s.CollectGarbage(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ManifestsRemoved != 1 || res.ChunksRemoved == 0 {
		t.Errorf("gc after the close: %d manifests, %d chunks removed; want 1 and all", res.ManifestsRemoved, res.ChunksRemoved)
	}
}
