package fs_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	sfs "github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/store"
)

// countingFS counts the requests the kernel sends.
type countingFS struct {
	fuse.RawFileSystem
	mu      sync.Mutex
	lookups map[string]int // by name
	ops     map[string]int // by operation
}

func (c *countingFS) count(op, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops[op]++
	if name != "" {
		c.lookups[name]++
	}
}

func (c *countingFS) get(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops[op]
}

func (c *countingFS) lookupsOf(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookups[name]
}

func (c *countingFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	c.count("lookup", name)
	return c.RawFileSystem.Lookup(cancel, h, name, out)
}

func (c *countingFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	c.count("readdir", "")
	return c.RawFileSystem.ReadDir(cancel, in, out)
}

func (c *countingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	c.count("readdir", "")
	return c.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (c *countingFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.count("opendir", "")
	return c.RawFileSystem.OpenDir(cancel, in, out)
}

func (c *countingFS) ReleaseDir(in *fuse.ReleaseIn) {
	c.count("releasedir", "")
	c.RawFileSystem.ReleaseDir(in)
}

func (c *countingFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	c.count("read", "")
	return c.RawFileSystem.Read(cancel, in, buf)
}

func (c *countingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.count("open", "")
	return c.RawFileSystem.Open(cancel, in, out)
}

func (c *countingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.count("release", "")
	c.RawFileSystem.Release(cancel, in)
}

func (c *countingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	c.count("flush", "")
	return c.RawFileSystem.Flush(cancel, in)
}

func (c *countingFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	c.count("readlink", "")
	return c.RawFileSystem.Readlink(cancel, h)
}

// mountCounting mounts s's view with the options fs.Mount uses, without
// passthrough, behind a countingFS.
func mountCounting(t *testing.T, fx *fixture) (*mount, *countingFS) {
	t.Helper()
	requireFUSE(t)
	s := fx.s
	root := sfs.NewRoot(s.Registry(), s.Blobs(), s.StoreDir(), sfs.Options{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	opts := sfs.FuseOptions(root, sfs.MountOptions{})
	c := &countingFS{RawFileSystem: sfs.RawFS(root, opts), lookups: map[string]int{}, ops: map[string]int{}}
	dir := t.TempDir()
	srv, err := fuse.NewServer(c, dir, &opts.MountOptions)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	go srv.Serve()
	m := &mount{dir: dir, root: root, srv: srv, s: s}
	s.OnChange(root.Changed)
	t.Cleanup(func() {
		s.OnChange(nil)
		if err := m.unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	if err := srv.WaitMount(); err != nil {
		t.Fatalf("WaitMount: %v", err)
	}
	return m, c
}

// TestKernelCaching checks the caching promised in doc.go by counting the
// requests that reach the server.
func TestKernelCaching(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{})
	m, c := mountCounting(t, fx)
	tree := fx.items["tree"].base

	t.Run("ItemEntries", func(t *testing.T) {
		for range 3 {
			if _, err := os.Lstat(m.path(tree, "nested", "a", "b", "c", "deep.txt")); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.lookupsOf("deep.txt"); n != 1 {
			t.Errorf("3 lstats of a file in an item: %d lookups, want 1", n)
		}
	})

	t.Run("ItemListing", func(t *testing.T) {
		sortedNames(t, m.path(tree))
		before := c.get("readdir")
		sortedNames(t, m.path(tree))
		if n := c.get("readdir") - before; n != 0 {
			t.Errorf("listing an item's directory again: %d readdir requests, want 0 (cached)", n)
		}
	})

	t.Run("FileData", func(t *testing.T) {
		p := m.path(tree, "big")
		if b, err := os.ReadFile(p); err != nil || len(b) != bigSize {
			t.Fatalf("read: %d bytes, %v", len(b), err)
		}
		before := c.get("read")
		if b, err := os.ReadFile(p); err != nil || len(b) != bigSize {
			t.Fatalf("read again: %d bytes, %v", len(b), err)
		}
		if n := c.get("read") - before; n != 0 {
			t.Errorf("reading a file again (new open): %d read requests, want 0 (page cache kept)", n)
		}
	})

	t.Run("Symlink", func(t *testing.T) {
		before := c.get("readlink")
		for range 3 {
			if _, err := os.Readlink(m.path(tree, "sub", "l")); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.get("readlink") - before; n != 1 {
			t.Errorf("3 readlinks: %d readlink requests, want 1 (cached)", n)
		}
	})

	// Directories are opened without OPENDIR (noOpendir): the first one
	// answers ENOSYS and the kernel never asks again, nor sends RELEASEDIR.
	t.Run("NoOpendir", func(t *testing.T) {
		for range 3 {
			if _, err := walkAll(m.path(tree), 0); err != nil {
				t.Fatal(err)
			}
		}
		if n := c.get("opendir"); n > 1 {
			t.Errorf("3 walks of an item: %d opendir requests, want at most 1 (the first, answered ENOSYS)", n)
		}
		if n := c.get("releasedir"); n != 0 {
			t.Errorf("3 walks of an item: %d releasedir requests, want 0", n)
		}
	})

	// Files too are opened without OPEN (the default: no OpenFiles), and
	// closed without FLUSH (answered ENOSYS once) or RELEASE.
	t.Run("NoOpen", func(t *testing.T) {
		for range 3 {
			for _, name := range []string{"big", "page", "one", "shared.txt"} {
				if _, err := os.ReadFile(m.path(tree, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n := c.get("open"); n > 1 {
			t.Errorf("12 opens of 4 files: %d open requests, want at most 1 (the first, answered ENOSYS)", n)
		}
		if n := c.get("flush"); n > 1 {
			t.Errorf("12 closes: %d flush requests, want at most 1 (the first, answered ENOSYS)", n)
		}
		if n := c.get("release"); n != 0 {
			t.Errorf("12 closes: %d release requests, want 0", n)
		}
	})

	// The root's misses are never cached; its listing is, until the root
	// changes: Changed drops it before an add returns.
	t.Run("RootListingUntilChange", func(t *testing.T) {
		const missing = "00000000000000000000000000000000-missing"
		for range 3 {
			if _, err := os.Lstat(m.path(missing)); err == nil {
				t.Fatal("missing path found")
			}
		}
		if n := c.lookupsOf(missing); n != 3 {
			t.Errorf("3 lstats of a missing path in the root: %d lookups, want 3 (misses in the root must not be cached)", n)
		}
		// a name that is no store path can never become valid: its miss
		// is cached (python probes <storedir>/lib at every start)
		for _, name := range []string{"lib", "0000000000000000000000000000000e-x", "00000000000000000000000000000000-a b", "000-short"} {
			for range 3 {
				if _, err := os.Lstat(m.path(name)); errnoOf(err) != syscall.ENOENT {
					t.Fatalf("lstat %s: %v, want ENOENT", name, err)
				}
			}
			if n := c.lookupsOf(name); n != 1 {
				t.Errorf("3 lstats of %q (no store path) in the root: %d lookups, want 1 (a cached miss)", name, n)
			}
		}
		first := sortedNames(t, m.dir)
		before := c.get("readdir")
		if again := sortedNames(t, m.dir); !slices.Equal(again, first) {
			t.Fatalf("root listed %v, then %v", first, again)
		}
		if n := c.get("readdir") - before; n != 0 {
			t.Errorf("listing the unchanged root again: %d readdir requests, want 0 (cached)", n)
		}
		src := filepath.Join(t.TempDir(), "late")
		if err := os.WriteFile(src, []byte("late\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := fx.s.Add(context.Background(), src, store.AddOptions{})
		if err != nil {
			t.Fatal(err)
		}
		before = c.get("readdir")
		after := sortedNames(t, m.dir)
		if !slices.Contains(after, filepath.Base(p)) || len(after) != len(first)+1 {
			t.Errorf("root listed %v after adding %s (before: %v)", after, p, first)
		}
		if n := c.get("readdir") - before; n == 0 {
			t.Errorf("listing the root after an add sent no readdir")
		}
	})

	// dirNode.Lookup sets a long entry timeout on a miss ("items never
	// change: cache the miss") and returns ENOENT; but go-fuse only makes
	// a cacheable negative entry of an ENOENT when the node left the entry
	// timeout at zero (and Options.NegativeTimeout is set), and sends any
	// other ENOENT to the kernel as a plain error, which the kernel does
	// not cache.
	t.Run("ItemMissesCached", func(t *testing.T) {
		const missing = "no-such-entry"
		for range 3 {
			if _, err := os.Lstat(m.path(tree, "nested", missing)); errnoOf(err) != syscall.ENOENT {
				t.Fatalf("lstat: %v, want ENOENT", err)
			}
		}
		n := c.lookupsOf(missing)
		if n != 1 {
			t.Errorf("3 lstats of a missing name in an item: %d lookups, want 1", n)
		}
	})
}

// TestWalkSendsNoLookups: a walk that stats every entry of a directory of
// 2000 entries (many pages of a listing) on a fresh mount gets every entry
// with its attributes from READDIRPLUS, on every page, and sends no LOOKUP
// for any of them. (With READDIRPLUS_AUTO the kernel asked for plain
// READDIR after the first page, then looked up each entry: on a cold walk
// of three CPython trees, 10740 round trips of 29k.)
func TestWalkSendsNoLookups(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{many: true})
	m, c := mountCounting(t, fx)
	n, err := walkAll(m.path(fx.items["many"].base), 0)
	if err != nil || n != 2001 {
		t.Fatalf("walk: %d entries, %v; want 2001", n, err)
	}
	if l := c.get("lookup"); l != 1 {
		t.Errorf("a walk of an item of 2000 entries: %d lookups, want 1 (the item)", l)
	}
}
