package cas_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
)

// faultSys wraps the real filesystem: it counts calls and lets a test
// replace any call with a hook (which may call through to the real one).
type faultSys struct {
	cas.OS
	mu     sync.Mutex
	calls  map[string]int
	link   func(n int, o, nw string) error // n = 1-based count of Link calls
	rename func(n int, o, nw string) error
}

func newFaultSys() *faultSys { return &faultSys{calls: map[string]int{}} }

func (f *faultSys) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	return f.calls[op]
}

func (f *faultSys) Link(o, n string) error {
	c := f.count("link")
	if f.link != nil {
		return f.link(c, o, n)
	}
	return f.OS.Link(o, n)
}

func (f *faultSys) Rename(o, n string) error {
	c := f.count("rename")
	if f.rename != nil {
		return f.rename(c, o, n)
	}
	return f.OS.Rename(o, n)
}

func (f *faultSys) Chmod(n string, m os.FileMode) error { f.count("chmod"); return f.OS.Chmod(n, m) }

func linkErr(o, n string, errno syscall.Errno) error {
	return &os.LinkError{Op: "link", Old: o, New: n, Err: errno}
}

var hello = bytes.Repeat([]byte("Hello, world!"), 1000) // 13000 bytes, as in Guix's tests

func reversed(b []byte) []byte {
	r := slices.Clone(b)
	slices.Reverse(r)
	return r
}

func write(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func keyOf(t *testing.T, p string) cas.Key {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	sum, err := nar.HashFile(fi.Mode()&0o100 != 0, fi.Size(), f)
	if err != nil {
		t.Fatal(err)
	}
	return cas.Key(sum)
}

// noDebris fails if a temp link is left in .links.
func noDebris(t *testing.T, l *cas.Links) {
	t.Helper()
	ents, _ := os.ReadDir(l.Dir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), cas.TempLinkPrefix) {
			t.Errorf("temp link left behind: %s", e.Name())
		}
	}
}

func newLinks(t *testing.T, store string, sys cas.Sys) *cas.Links {
	t.Helper()
	l, err := cas.NewLinks(store, sys, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { noDebris(t, l) })
	return l
}

func dedup(t *testing.T, l *cas.Links, root string) cas.DedupStats {
	t.Helper()
	st, err := l.DedupTree(context.Background(), root, cas.DedupOptions{MinSize: cas.DefaultLinksMinSize, Workers: 1})
	if err != nil {
		t.Fatalf("DedupTree: %v", err)
	}
	return st
}

// Guix tests/store-deduplication.scm, "deduplicate, below %deduplication-minimum-size".
func TestGuixBelowMinimumSize(t *testing.T) {
	store := t.TempDir()
	for n := range 5 {
		write(t, filepath.Join(store, string(rune('0'+n)), "a/b/c"), []byte("Hello, world!"), 0o444)
	}
	l := newLinks(t, store, nil)
	dedup(t, l, store)
	inodes := map[uint64]bool{}
	for n := range 5 {
		st := stat(t, filepath.Join(store, string(rune('0'+n)), "a/b/c"))
		inodes[st.Ino] = true
		if st.Nlink != 1 {
			t.Errorf("file %d: nlink %d; want 1", n, st.Nlink)
		}
	}
	if len(inodes) != 5 {
		t.Errorf("%d distinct inodes; want 5", len(inodes))
	}
	if _, err := os.Lstat(l.Dir()); err == nil {
		t.Errorf(".links exists; nothing should have been linked")
	}
}

// Guix "deduplicate": five copies share one inode (nlink 6), a unique file
// has nlink 2, and a read-only parent (0544) does not prevent it and gets its
// exact mode and mtime back.
func TestGuixDeduplicate(t *testing.T) {
	store := t.TempDir()
	for n := range 5 {
		write(t, filepath.Join(store, string(rune('0'+n)), "a/b/c"), hello, 0o444)
	}
	write(t, filepath.Join(store, "unique"), reversed(hello), 0o444)
	ro := filepath.Join(store, "1/a/b")
	if err := os.Chmod(ro, 0o544); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
	unix.UtimesNanoAt(unix.AT_FDCWD, ro, ts, 0)
	storeBefore := stat(t, store)

	l := newLinks(t, store, nil)
	st := dedup(t, l, store)
	var ino uint64
	for n := range 5 {
		s := stat(t, filepath.Join(store, string(rune('0'+n)), "a/b/c"))
		if n == 0 {
			ino = s.Ino
		}
		if s.Ino != ino || s.Nlink != 6 {
			t.Errorf("copy %d: ino %d nlink %d; want ino %d nlink 6", n, s.Ino, s.Nlink, ino)
		}
		if got, _ := os.ReadFile(filepath.Join(store, string(rune('0'+n)), "a/b/c")); !bytes.Equal(got, hello) {
			t.Errorf("copy %d: contents changed", n)
		}
	}
	u := stat(t, filepath.Join(store, "unique"))
	if u.Ino == ino || u.Nlink != 2 {
		t.Errorf("unique: ino %d nlink %d; want its own inode with nlink 2", u.Ino, u.Nlink)
	}
	r := stat(t, ro)
	if r.Mode&0o7777 != 0o544 || r.Mtim.Sec != 1 || r.Mtim.Nsec != 0 {
		t.Errorf("read-only parent: mode %o mtime %d.%d; want 0544 and 1.0 restored", r.Mode&0o7777, r.Mtim.Sec, r.Mtim.Nsec)
	}
	if sa := stat(t, store); sa.Mode != storeBefore.Mode {
		t.Errorf("store dir mode changed: %o -> %o", storeBefore.Mode, sa.Mode)
	}
	if st.Linked != 4 || st.Canonical != 2 || st.BytesFreed != 4*13000 {
		t.Errorf("stats %+v; want 4 linked, 2 new entries, %d bytes freed", st, 4*13000)
	}
	// The entry's name is the nix32 NAR hash (the Guix test data's known value).
	if _, err := os.Lstat(filepath.Join(l.Dir(), "17cwh1g1qkzvifyx91jcyk2gvw1zr2pd4n5wgzdzccc37kmz5mxl")); err != nil {
		t.Errorf("entry for the data: %v", err)
	}
}

// Guix "deduplicate, ENOSPC": link calls 1-4 succeed, later ones fail with
// ENOSPC; the failed first attempt (no .links yet) counts as a call.
func TestGuixLinkBudgetENOSPC(t *testing.T) {
	store := t.TempDir()
	for n := range 10 {
		data := hello
		if n >= 5 {
			data = bytes.Repeat([]byte("Hi, world!"), 1000)
		}
		write(t, filepath.Join(store, string(rune('0'+n))), data, 0o444)
	}
	sys := newFaultSys()
	sys.link = func(n int, o, nw string) error {
		if n <= 4 {
			return sys.OS.Link(o, nw)
		}
		return linkErr(o, nw, unix.ENOSPC)
	}
	l := newLinks(t, store, sys)
	dedup(t, l, store)
	var nlinks []uint64
	for n := range 10 {
		nlinks = append(nlinks, stat(t, filepath.Join(store, string(rune('0'+n)))).Nlink)
	}
	if want := []uint64{4, 4, 4, 1, 1, 1, 1, 1, 1, 1}; !slices.Equal(nlinks, want) {
		t.Errorf("nlinks = %v; want %v", nlinks, want)
	}
}

// setup makes a store with an entry for hello and a second copy to link.
func setup(t *testing.T, sys cas.Sys) (l *cas.Links, path string, key cas.Key) {
	t.Helper()
	store := t.TempDir()
	first := filepath.Join(store, "item1", "f")
	path = filepath.Join(store, "item2", "f")
	write(t, first, hello, 0o444)
	write(t, path, hello, 0o444)
	key = keyOf(t, first)
	real, _ := cas.NewLinks(store, nil, nil)
	if r, err := real.Canonicalize(first, key); err != nil || r.Outcome != cas.Canonical {
		t.Fatalf("first Canonicalize = %v, %v", r, err)
	}
	return newLinks(t, store, sys), path, key
}

func checkContents(t *testing.T, p string) {
	t.Helper()
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, hello) {
		t.Errorf("%s: contents changed (%v)", p, err)
	}
}

func TestInjectedFaults(t *testing.T) {
	cases := []struct {
		name    string
		arrange func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key)
		want    cas.Outcome
		wantErr bool
	}{
		{"EMLINK on the temp link", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			sys.link = func(n int, o, nw string) error { return linkErr(o, nw, unix.EMLINK) }
		}, cas.Skipped, false},
		{"EMLINK on rename", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			sys.rename = func(n int, o, nw string) error { return &os.LinkError{Op: "rename", Old: o, New: nw, Err: unix.EMLINK} }
		}, cas.Skipped, false},
		{"EIO on rename", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			sys.rename = func(n int, o, nw string) error { return &os.LinkError{Op: "rename", Old: o, New: nw, Err: unix.EIO} }
		}, cas.Skipped, true},
		{"EEXIST on the temp name", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			sys.link = func(n int, o, nw string) error {
				if n == 1 {
					return linkErr(o, nw, unix.EEXIST)
				}
				return sys.OS.Link(o, nw)
			}
		}, cas.Linked, false},
		{"entry removed by a collector before the temp link", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			sys.link = func(n int, o, nw string) error {
				if n == 1 {
					os.Remove(l.Entry(key)) // the GC pruned it: ENOENT
				}
				return sys.OS.Link(o, nw)
			}
		}, cas.Canonical, false},
		{"file vanished", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			os.Remove(l.Entry(key))
			sys.link = func(n int, o, nw string) error {
				os.Remove(path)
				return sys.OS.Link(o, nw)
			}
		}, cas.Skipped, false},
		{"dangling relative symlink entry (bug#42023)", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			os.Remove(l.Entry(key))
			os.Symlink("../nonexistent-lib.so", l.Entry(key))
		}, cas.Canonical, false},
		{"corrupted entry of another size", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			os.Remove(l.Entry(key))
			os.WriteFile(l.Entry(key), []byte("garbage"), 0o444)
		}, cas.Canonical, false},
		{"another process wins the entry (EEXIST)", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			other := filepath.Join(filepath.Dir(filepath.Dir(path)), "item1", "f")
			os.Remove(l.Entry(key))
			sys.link = func(n int, o, nw string) error {
				if n == 1 { // just before our link(path, entry), theirs lands
					sys.OS.Link(other, l.Entry(key))
				}
				return sys.OS.Link(o, nw)
			}
		}, cas.Linked, false},
		{"full directory index (ENOSPC) creating the entry", func(t *testing.T, sys *faultSys, l *cas.Links, path string, key cas.Key) {
			os.Remove(l.Entry(key))
			sys.link = func(n int, o, nw string) error { return linkErr(o, nw, unix.ENOSPC) }
		}, cas.Skipped, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sys := newFaultSys()
			l, path, key := setup(t, sys)
			dir := filepath.Dir(path)
			os.Chmod(dir, 0o555)
			before := stat(t, dir)
			c.arrange(t, sys, l, path, key)
			r, err := l.Canonicalize(path, key)
			if (err != nil) != c.wantErr || (err == nil && r.Outcome != c.want) {
				t.Errorf("Canonicalize = %v (%s), %v; want %v, error %v", r.Outcome, r.Reason, err, c.want, c.wantErr)
			}
			if _, serr := os.Lstat(path); serr == nil {
				checkContents(t, path)
			}
			if e, err := os.Lstat(l.Entry(key)); err == nil && e.Mode().IsRegular() {
				checkContents(t, l.Entry(key))
			}
			after := stat(t, dir)
			if c.name == "file vanished" { // the test itself removed a file from dir
				after.Mtim = before.Mtim
			}
			if after.Mode != before.Mode || after.Mtim != before.Mtim {
				t.Errorf("dir mode/mtime %o %v; want %o %v restored", after.Mode, after.Mtim, before.Mode, before.Mtim)
			}
			if n := sys.calls["link"]; n > 20 {
				t.Errorf("%d link calls: a retry loop", n)
			}
		})
	}
}

// A file already linked to its entry needs no temp link and no rename.
func TestAlreadyLinkedIsANoOp(t *testing.T) {
	sys := newFaultSys()
	l, path, key := setup(t, sys)
	if r, err := l.Canonicalize(path, key); err != nil || r.Outcome != cas.Linked {
		t.Fatalf("first = %v, %v", r, err)
	}
	sys.calls = map[string]int{}
	r, err := l.Canonicalize(path, key)
	if err != nil || r.Outcome != cas.Already {
		t.Errorf("second = %v, %v; want Already", r.Outcome, err)
	}
	if sys.calls["link"] != 0 || sys.calls["rename"] != 0 || sys.calls["chmod"] != 0 {
		t.Errorf("calls %v; want no link, rename or chmod", sys.calls)
	}
}

// Identical bytes with a different exec bit are different entries.
func TestExecBitSeparates(t *testing.T) {
	store := t.TempDir()
	write(t, filepath.Join(store, "a/x"), hello, 0o444)
	write(t, filepath.Join(store, "b/x"), hello, 0o555)
	l := newLinks(t, store, nil)
	dedup(t, l, store)
	if stat(t, filepath.Join(store, "a/x")).Ino == stat(t, filepath.Join(store, "b/x")).Ino {
		t.Errorf("exec and non-exec copies share an inode")
	}
}

// Writable files are never linked.
func TestWritableSkipped(t *testing.T) {
	store := t.TempDir()
	write(t, filepath.Join(store, "a/x"), hello, 0o444)
	write(t, filepath.Join(store, "b/x"), hello, 0o644)
	l := newLinks(t, store, nil)
	st := dedup(t, l, store)
	if st.Writable != 1 || stat(t, filepath.Join(store, "b/x")).Nlink != 1 {
		t.Errorf("stats %+v; want the writable file skipped and untouched", st)
	}
}

// LinkExisting links a new file to an existing entry without writing it.
func TestLinkExisting(t *testing.T) {
	l, path, key := setup(t, nil)
	dst := filepath.Join(filepath.Dir(path), "new")
	ok, err := l.LinkExisting(key, int64(len(hello)), false, dst)
	if err != nil || !ok {
		t.Fatalf("LinkExisting = %v, %v; want true", ok, err)
	}
	if stat(t, dst).Ino != stat(t, l.Entry(key)).Ino {
		t.Errorf("dst is not a link of the entry")
	}
	if ok, _ := l.LinkExisting(key, int64(len(hello)), true, dst+"x"); ok {
		t.Errorf("linked with the wrong exec bit")
	}
	if ok, _ := l.LinkExisting(key, 1, false, dst+"y"); ok {
		t.Errorf("linked with the wrong size")
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// A directory with more files than one work unit holds, read-only, handled
// by several workers: every copy ends on one of two inodes, the directory
// gets its mode and mtime back, and no descriptor stays open (the replaced
// files are released by the time DedupTrees returns).
func TestDedupLargeDirectory(t *testing.T) {
	t.Run("default", testDedupLargeDirectory)
	// with few descriptors allowed, the work units shrink instead of
	// running out of them (EMFILE would count as errors)
	t.Run("low-nofile", func(t *testing.T) {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
		low := lim
		low.Cur = 64
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		testDedupLargeDirectory(t)
	})
}

func testDedupLargeDirectory(t *testing.T) {
	store := t.TempDir()
	dir := filepath.Join(store, "item", "lib")
	a, b := bytes.Repeat([]byte("a"), 9000), bytes.Repeat([]byte("b"), 9000)
	const n = 600
	for i := range n {
		data := a
		if i%3 == 0 {
			data = b
		}
		write(t, filepath.Join(dir, "f"+strings.Repeat("0", 4-len(itoa(i)))+itoa(i)), data, 0o444)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1, 0)
	if err := os.Chtimes(dir, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	fds := openFDs(t)
	l := newLinks(t, store, nil)
	st, err := l.DedupTree(context.Background(), store, cas.DedupOptions{MinSize: 0, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != n || st.Canonical != 2 || st.Linked != n-2 || st.Errors != 0 || st.BytesFreed != (n-2)*9000 {
		t.Errorf("stats %+v; want %d files, 2 new entries, %d linked", st, n, n-2)
	}
	inodes := map[uint64]bool{}
	for i := range n {
		inodes[stat(t, filepath.Join(dir, "f"+strings.Repeat("0", 4-len(itoa(i)))+itoa(i))).Ino] = true
	}
	if len(inodes) != 2 {
		t.Errorf("%d inodes after dedup; want 2", len(inodes))
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o555 || !fi.ModTime().Equal(mtime) {
		t.Errorf("directory mode %v mtime %v; want 0555 and %v", fi.Mode().Perm(), fi.ModTime(), mtime)
	}
	if got := openFDs(t); got != fds {
		t.Errorf("%d descriptors open after DedupTree; %d before", got, fds)
	}
}

// A cancelled context stops the walk; nothing is left half done.
func TestDedupCancelled(t *testing.T) {
	store := t.TempDir()
	for i := range 50 {
		write(t, filepath.Join(store, "d"+itoa(i), "x"), hello, 0o444)
	}
	l := newLinks(t, store, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.DedupTree(ctx, store, cas.DedupOptions{Workers: 2}); err == nil {
		t.Fatal("DedupTree with a cancelled context succeeded")
	}
	for i := range 50 {
		checkContents(t, filepath.Join(store, "d"+itoa(i), "x"))
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
