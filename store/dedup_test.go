package store_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/store"
)

func ino(t *testing.T, p string) (uint64, uint64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino, uint64(st.Nlink)
}

func diskStore(t *testing.T, min int64) *store.Store {
	t.Helper()
	s, err := store.Init(filepath.Join(t.TempDir(), "state"), store.InitOptions{Mode: store.ModeDisk, LinksMinSize: &min}, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkSound(t, s); s.Close() })
	return s
}

// Disk mode deduplicates while adding, and a file whose entry exists is
// linked instead of written.
func TestAddDeduplicates(t *testing.T) {
	s := diskStore(t, cas.DefaultLinksMinSize)
	dir := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: the large-file path
	mid := bytes.Repeat([]byte("Hello, world!"), 1000)     // 13000 B: the in-memory path
	for _, n := range []string{"one", "two"} {
		os.MkdirAll(filepath.Join(dir, n), 0o755)
		os.WriteFile(filepath.Join(dir, n, "big"), big, 0o644)
		os.WriteFile(filepath.Join(dir, n, "mid"), mid, 0o644)
		os.WriteFile(filepath.Join(dir, n, "small"), []byte("small "+n), 0o644)
	}
	var st1, st2 cas.DedupStats
	one := add(t, s, filepath.Join(dir, "one"), store.AddOptions{Dedup: &st1})
	two := add(t, s, filepath.Join(dir, "two"), store.AddOptions{Dedup: &st2})
	if st1.Canonical != 2 || st2.Linked != 2 || st2.BytesFreed != int64(len(big)+len(mid)) {
		t.Errorf("stats: first %+v, second %+v; want 2 new entries, then 2 linked (%d bytes)", st1, st2, len(big)+len(mid))
	}
	for _, f := range []string{"big", "mid"} {
		i1, n1 := ino(t, filepath.Join(s.RealStoreDir(), filepath.Base(one), f))
		i2, _ := ino(t, filepath.Join(s.RealStoreDir(), filepath.Base(two), f))
		if i1 != i2 || n1 != 3 {
			t.Errorf("%s: inodes %d %d nlink %d; want one inode with nlink 3", f, i1, i2, n1)
		}
	}
	if _, n := ino(t, filepath.Join(s.RealStoreDir(), filepath.Base(one), "small")); n != 1 {
		t.Errorf("small file: nlink %d; want 1 (below the threshold)", n)
	}
	// --no-dedup writes its own copy.
	os.WriteFile(filepath.Join(dir, "two", "extra"), []byte("x"), 0o644)
	three := add(t, s, filepath.Join(dir, "two"), store.AddOptions{NoDedup: true})
	if _, n := ino(t, filepath.Join(s.RealStoreDir(), filepath.Base(three), "big")); n != 1 {
		t.Errorf("--no-dedup: nlink %d; want 1", n)
	}
	// optimise links it, and a second optimise finds nothing to do.
	st, err := s.Optimise(context.Background())
	if err != nil || st.Linked != 2 {
		t.Errorf("Optimise = %+v, %v; want 2 files linked", st, err)
	}
	if st, err := s.Optimise(context.Background()); err != nil || st.Linked != 0 || st.Files != 0 {
		t.Errorf("second Optimise = %+v, %v; want nothing considered", st, err)
	}
}

// With a threshold of 0 every regular file is linked, as Nix does.
func TestLinksMinSizeZero(t *testing.T) {
	s := diskStore(t, 0)
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(dir, n), 0o755)
		os.WriteFile(filepath.Join(dir, n, "f"), []byte("tiny"), 0o644)
		os.WriteFile(filepath.Join(dir, n, "empty"), nil, 0o644)
		add(t, s, filepath.Join(dir, n), store.AddOptions{NoDedup: true})
	}
	st, err := s.Optimise(context.Background())
	if err != nil || st.Linked != 2 || st.BytesFreed != 4 {
		t.Errorf("Optimise = %+v, %v; want 2 linked, 4 bytes freed", st, err)
	}
}

// A disk-mode import deduplicates too, and blob mode refuses optimise.
func TestImportDeduplicates(t *testing.T) {
	s := diskStore(t, cas.DefaultLinksMinSize)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), bytes.Repeat([]byte("z"), 3<<20), 0o644)
	p := add(t, s, filepath.Join(dir, "f"), store.AddOptions{})
	n := export(t, s, p)
	var st cas.DedupStats
	q, err := s.Import(context.Background(), bytes.NewReader(n), store.ImportOptions{Name: "other", Dedup: &st})
	if err != nil || st.Linked != 1 {
		t.Fatalf("Import = %s, %v, %+v; want one file linked", q, err, st)
	}
	b := newStore(t, store.ModeBlob, "/gnu/store")
	if _, err := b.Optimise(context.Background()); err == nil {
		t.Errorf("Optimise on a blob store succeeded")
	}
}

// Items are temp-rooted before they are renamed into the store.
func TestTempRootBeforeRename(t *testing.T) {
	s := diskStore(t, cas.DefaultLinksMinSize)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	p := add(t, s, filepath.Join(dir, "f"), store.AddOptions{})
	roots := s.TempRoots()
	if len(roots) != 1 || roots[0] != filepath.Base(p) {
		t.Errorf("TempRoots = %v; want [%s]", roots, filepath.Base(p))
	}
	file, err := os.ReadFile(filepath.Join(s.StateDir(), "temproots", strconv.Itoa(os.Getpid())))
	if err != nil || string(file) != filepath.Base(p)+"\x00" {
		t.Errorf("temproots file = %q, %v; want the base name and a NUL", file, err)
	}
	// A set of its own (a daemon request): its file goes when it closes.
	tr := s.NewTempRoots()
	os.WriteFile(filepath.Join(dir, "g"), []byte("y"), 0o644)
	q, err := s.Add(store.WithTempRoots(context.Background(), tr), filepath.Join(dir, "g"), store.AddOptions{})
	if err != nil || !slices.Equal(tr.Roots(), []string{filepath.Base(q)}) {
		t.Errorf("request temp roots = %v, %v; want [%s]", tr.Roots(), err, filepath.Base(q))
	}
	if len(s.TempRoots()) != 1 {
		t.Errorf("the process set got the request's root too: %v", s.TempRoots())
	}
	tr.Close()
	ents, _ := os.ReadDir(filepath.Join(s.StateDir(), "temproots"))
	if len(ents) != 1 {
		t.Errorf("temproots holds %d files after the request set closed; want 1", len(ents))
	}
}
