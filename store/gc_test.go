package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/store"
)

// graphStore adds a -> b -> c (a refers to b ...) and a lone d, each with a
// distinct 20000-byte file, so disk mode links them and blob mode stores
// them as blobs.
func graphStore(t *testing.T, mode store.Mode) (s *store.Store, a, b, c, d string) {
	t.Helper()
	s = newStore(t, mode, "/gnu/store")
	dir := t.TempDir()
	mk := func(name string, refs ...string) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "data"), []byte(strings.Repeat(name, 20000)), 0o644)
		return add(t, s, p, store.AddOptions{Refs: refs})
	}
	c = mk("c")
	b = mk("b", c)
	a = mk("a", b)
	d = mk("d")
	return s, a, b, c, d
}

// reopen closes s and opens its store again: the new handle holds none
// of the temp roots the adds through s took (this process's, as Nix keeps
// them), so it sees what a collector in another process would. It is
// closed when the test ends.
func reopen(t *testing.T, s *store.Store) *store.Store {
	t.Helper()
	s.Close()
	h, err := store.Open(s.StateDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func valid(t *testing.T, s *store.Store) []string {
	t.Helper()
	var out []string
	s.List(func(p string) bool { out = append(out, p); return true })
	return out
}

func TestGC(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s, a, b, c, d := graphStore(t, mode)
			ctx := context.Background()
			if _, err := s.AddRoot(ctx, "keep-b", b, false); err != nil {
				t.Fatal(err)
			}
			s = reopen(t, s)
			dry, err := s.CollectGarbage(ctx, store.GCOptions{DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sorted(dry.Dead), sorted([]string{a, d})) || !slices.Equal(dry.Live, sorted([]string{b, c})) {
				t.Fatalf("dry run: dead %v live %v; want dead [a d], live [b c]", dry.Dead, dry.Live)
			}
			if _, err := s.CollectGarbage(ctx, store.GCOptions{Paths: []string{c}}); !errors.Is(err, store.ErrAlive) {
				t.Errorf("delete c (alive) = %v; want ErrAlive", err)
			}
			res, err := s.CollectGarbage(ctx, store.GCOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sorted(res.Deleted), sorted([]string{a, d})) || res.Freed < 40000 {
				t.Errorf("gc deleted %v, freed %d; want [a d] and at least 40000 bytes", res.Deleted, res.Freed)
			}
			if got := valid(t, s); !slices.Equal(got, sorted([]string{b, c})) {
				t.Errorf("valid after gc = %v", got)
			}
			switch mode {
			case store.ModeDisk:
				if _, err := os.Lstat(filepath.Join(s.RealStoreDir(), filepath.Base(a))); err == nil {
					t.Errorf("a's files are still there")
				}
				ents, _ := os.ReadDir(filepath.Join(s.RealStoreDir(), ".links"))
				if len(ents) != 2 || res.LinksRemoved != 2 {
					t.Errorf(".links has %d entries (removed %d); want 2 left (b's and c's), 2 removed", len(ents), res.LinksRemoved)
				}
			case store.ModeBlob:
				if res.BlobsRemoved != 2 {
					t.Errorf("blobs removed = %d; want 2", res.BlobsRemoved)
				}
			}
			// Unroot: everything goes.
			if err := s.RemoveRoot("keep-b"); err != nil {
				t.Fatal(err)
			}
			if res, err := s.CollectGarbage(ctx, store.GCOptions{}); err != nil || len(res.Deleted) != 2 {
				t.Errorf("second gc = %+v, %v; want b and c deleted", res, err)
			}
			if got := valid(t, s); len(got) != 0 {
				t.Errorf("valid after unrooting = %v", got)
			}
		})
	}
}

func TestGCRootsAndTempRoots(t *testing.T) {
	s, a, _, _, d := graphStore(t, store.ModeBlob)
	ctx := context.Background()
	link := filepath.Join(t.TempDir(), "result")
	if _, err := s.AddRoot(ctx, link, a, true); err != nil {
		t.Fatal(err)
	}
	h := reopen(t, s)
	tr := h.NewTempRoots()
	defer tr.Close()
	tr.Add(filepath.Base(d)) // a request still working on d
	res, err := h.CollectGarbage(store.WithTempRoots(ctx, tr), store.GCOptions{})
	if err != nil || len(res.Deleted) != 0 {
		t.Fatalf("gc = %+v, %v; want nothing deleted (a rooted indirectly, d temp-rooted)", res, err)
	}
	roots, _ := h.Roots()
	if len(roots) != 1 || roots[0].Link != link || roots[0].Path != a {
		t.Errorf("roots = %+v; want the indirect link", roots)
	}
	// The link goes: the indirect root is stale and removed; a is dead.
	os.Remove(link)
	tr.Close()
	res, err = h.CollectGarbage(ctx, store.GCOptions{})
	if err != nil || len(res.Deleted) != 4 {
		t.Errorf("gc = %+v, %v; want all 4 deleted", res, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(h.StateDir(), "gcroots", "auto")); len(ents) != 0 {
		t.Errorf("stale auto root left: %v", ents)
	}
}

func TestGCMaxFreed(t *testing.T) {
	s, _, _, _, _ := graphStore(t, store.ModeDisk)
	h := reopen(t, s)
	res, err := h.CollectGarbage(context.Background(), store.GCOptions{MaxFreed: 1})
	if err != nil || len(res.Deleted) != 1 {
		t.Fatalf("gc --max-freed 1 = %+v, %v; want exactly one path deleted", res, err)
	}
	checkSound(t, h)
}

// A file the collector cannot delete (chattr +i: EPERM) fails the
// collection with that error, whether its item is deleted in place or
// through the trash: the dead items are invalid and the live one intact.
// Once the file may go, the next collection leaves exactly the live item,
// with nothing in tmp/.
func TestGCDeletionFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chattr +i needs root")
	}
	chattr := func(op, p string) error { return exec.Command("chattr", op, p).Run() }
	for _, tc := range []struct {
		name string
		size int
	}{{"in-place", 1000}, {"trash", 2 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			s := diskStore(t, cas.DefaultLinksMinSize)
			ctx := context.Background()
			dir := t.TempDir()
			mk := func(name string, n int) string {
				p := filepath.Join(dir, name)
				os.MkdirAll(filepath.Join(p, "sub"), 0o755)
				os.WriteFile(filepath.Join(p, "sub", "data"), bytes.Repeat([]byte(name), n/len(name)), 0o644)
				return add(t, s, p, store.AddOptions{})
			}
			keep := mk("keep", 1000)
			mk("dead", tc.size)
			stuck := mk("stuck", tc.size)
			if _, err := s.AddRoot(ctx, "keep", keep, false); err != nil {
				t.Fatal(err)
			}
			s = reopen(t, s)
			file := filepath.Join(s.RealStoreDir(), filepath.Base(stuck), "sub", "data")
			if err := chattr("+i", file); err != nil {
				t.Skipf("chattr +i %s: %v (no chattr, or a filesystem without the flag)", file, err)
			}
			// where the file is now: in the store, or in a trash under tmp/
			where := func() string {
				if m, _ := filepath.Glob(filepath.Join(s.StateDir(), "tmp", "*", filepath.Base(stuck), "sub", "data")); len(m) == 1 {
					return m[0]
				}
				return file
			}
			t.Cleanup(func() { chattr("-i", where()) })
			_, err := s.CollectGarbage(ctx, store.GCOptions{})
			if !errors.Is(err, syscall.EPERM) {
				t.Fatalf("CollectGarbage with an undeletable file: %v; want EPERM", err)
			}
			if !strings.Contains(err.Error(), filepath.Join(filepath.Base(stuck), "sub", "data")) {
				t.Errorf("the error %q does not name the file", err)
			}
			if got := valid(t, s); !slices.Equal(got, []string{keep}) {
				t.Errorf("valid after the failed collection: %v; want only %s", got, keep)
			}
			if err := chattr("-i", where()); err != nil {
				t.Fatal(err)
			}
			if _, err := s.CollectGarbage(ctx, store.GCOptions{}); err != nil {
				t.Fatalf("CollectGarbage once the file may go: %v", err)
			}
			ents, _ := os.ReadDir(s.RealStoreDir())
			var names []string
			for _, e := range ents {
				if e.Name() != ".links" {
					names = append(names, e.Name())
				}
			}
			if !slices.Equal(names, []string{filepath.Base(keep)}) {
				t.Errorf("store/ holds %v; want only %s", names, filepath.Base(keep))
			}
			if tmp, _ := os.ReadDir(filepath.Join(s.StateDir(), "tmp")); len(tmp) != 0 {
				var left []string
				for _, e := range tmp {
					left = append(left, e.Name())
				}
				t.Errorf("tmp/ holds %v after the collection", left)
			}
		})
	}
}
