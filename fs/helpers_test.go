package fs_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	sfs "github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// The tests below mount a store's view in the test process and access it
// from the test process with plain system calls. go-fuse's "Deadlocks"
// notes list what must not happen then: no subprocess may inherit a
// descriptor on the mount or start in it, and no page of a file on the
// mount may be faulted in by this process (mmap), so the one mmap test runs
// in a child process (helperMain) and no test runs in parallel with it.

// requireFUSE skips the test when FUSE mounts cannot be made here, or fails
// it when STOREFS_TEST_FUSE=require.
func requireFUSE(t testing.TB) {
	t.Helper()
	why := ""
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		why = fmt.Sprintf("cannot open /dev/fuse: %v", err)
	} else {
		f.Close()
		if os.Geteuid() != 0 {
			_, err1 := exec.LookPath("fusermount3")
			_, err2 := exec.LookPath("fusermount")
			if err1 != nil && err2 != nil {
				why = "not root and neither fusermount3 nor fusermount is in $PATH"
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("STOREFS_TEST_FUSE") == "require" {
		t.Fatalf("FUSE required (STOREFS_TEST_FUSE=require) but unavailable: %s", why)
	}
	t.Skipf("FUSE unavailable: %s (set STOREFS_TEST_FUSE=require to fail instead)", why)
}

// scratchDir is a temp dir for stores and sources, removed at cleanup: on
// /dev/shm when that is a writable tmpfs (creating tens of thousands of
// files on a disk can take many seconds), else t.TempDir().
func scratchDir(t testing.TB) string {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil {
		if dir, err := os.MkdirTemp("/dev/shm", "storefs-fs-test-"); err == nil {
			t.Cleanup(func() {
				if err := os.RemoveAll(dir); err != nil {
					t.Errorf("removing %s: %v", dir, err)
				}
			})
			return dir
		}
	}
	return t.TempDir()
}

// newStore creates a blob-mode store in a temp dir and holds its registry,
// as the mount command does.
func newStore(t testing.TB) *store.Store {
	t.Helper()
	return newStoreMode(t, store.ModeBlob)
}

// newStoreMode is newStore for a mode of its own (blob or chunk).
func newStoreMode(t testing.TB, mode store.Mode) *store.Store {
	t.Helper()
	s, err := store.Init(filepath.Join(scratchDir(t), "state"), store.InitOptions{Mode: mode}, store.Options{})
	if err != nil {
		t.Fatalf("store.Init: %v", err)
	}
	if err := s.Registry().Hold(); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	t.Cleanup(func() {
		s.OnChange(nil)
		if err := s.Registry().Release(); err != nil {
			t.Errorf("Release: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("store Close: %v", err)
		}
	})
	return s
}

// mount is a store's view mounted in this process.
type mount struct {
	dir  string
	root *sfs.Root
	srv  *fuse.Server

	s    *store.Store
	once sync.Once
	err  error
}

// mountStore mounts s's view at a fresh mountpoint, wired to s as the mount
// command wires it (OnChange). The mount is stopped at cleanup, whether the
// test failed or not, and must then be gone from /proc/self/mountinfo.
func mountStore(t testing.TB, s *store.Store) *mount {
	t.Helper()
	return mountStoreAt(t, s, t.TempDir())
}

func mountStoreAt(t testing.TB, s *store.Store, dir string) *mount {
	t.Helper()
	return mountStoreWith(t, s, dir, noOpen)
}

// readPath is how a test mount serves file reads.
type readPath string

const (
	noOpen      readPath = "no-open"     // the default: files opened without a request
	splice      readPath = "splice"      // OpenFiles, reads spliced by this process
	passthrough readPath = "passthrough" // OpenFiles and passthrough (root)
)

// readPaths are the read paths this process can test.
func readPaths() []readPath {
	rp := []readPath{noOpen, splice}
	if os.Geteuid() == 0 {
		rp = append(rp, passthrough)
	}
	return rp
}

// mountStoreWith is mountStoreAt with the read path rp.
func mountStoreWith(t testing.TB, s *store.Store, dir string, rp readPath) *mount {
	t.Helper()
	return mountStoreOptions(t, s, dir, sfs.Options{
		OpenFiles:   rp != noOpen,
		Passthrough: rp == passthrough,
	})
}

// mountStoreOptions is mountStoreAt with the view's options o (its owner
// and chunk areas filled in).
func mountStoreOptions(t testing.TB, s *store.Store, dir string, o sfs.Options) *mount {
	t.Helper()
	requireFUSE(t)
	o.UID, o.GID = uint32(os.Getuid()), uint32(os.Getgid())
	o.Chunks = s.Chunks()
	root := sfs.NewRoot(s.Registry(), s.Blobs(), s.StoreDir(), o)
	s.OnChange(root.Changed)
	s.KeepInUse(root.InUse)
	srv, err := sfs.Mount(dir, root, sfs.MountOptions{})
	if err != nil {
		s.OnChange(nil)
		t.Fatalf("Mount(%s): %v", dir, err)
	}
	m := &mount{dir: dir, root: root, srv: srv, s: s}
	t.Cleanup(func() {
		if err := m.unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	t.Logf("mounted at %s; file reads: %s", dir, sfs.ReadPath(srv, root))
	return m
}

// unmount stops the mount (once) and checks that it is gone.
func (m *mount) unmount() error {
	m.once.Do(func() {
		m.s.OnChange(nil)
		m.s.KeepInUse(nil)
		if err := sfs.Stop(m.srv, m.dir); err != nil {
			m.err = fmt.Errorf("fs.Stop: %w", err)
			return
		}
		mounted, err := sfs.IsMounted(m.dir)
		if err != nil {
			m.err = fmt.Errorf("IsMounted: %w", err)
		} else if mounted {
			m.err = fmt.Errorf("%s is still in /proc/self/mountinfo after fs.Stop", m.dir)
		}
	})
	return m.err
}

// path is the mounted path of a base name (plus optional components).
func (m *mount) path(elem ...string) string {
	return filepath.Join(append([]string{m.dir}, elem...)...)
}

// mountInfoOptions returns the per-mount options of the mount at dir.
func mountInfoOptions(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && strings.ReplaceAll(fields[4], `\040`, " ") == dir {
			return strings.Split(fields[5], ",")
		}
	}
	t.Fatalf("%s not found in /proc/self/mountinfo", dir)
	return nil
}

// --- source trees -----------------------------------------------------

// srcTree writes files below a directory.
type srcTree struct {
	t   testing.TB
	dir string
}

func (w srcTree) file(rel string, data []byte, mode os.FileMode) {
	w.t.Helper()
	p := filepath.Join(w.dir, rel)
	must(w.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(w.t, os.WriteFile(p, data, mode))
	must(w.t, os.Chmod(p, mode))
}

func (w srcTree) mkdir(rel string) {
	w.t.Helper()
	must(w.t, os.MkdirAll(filepath.Join(w.dir, rel), 0o755))
}

func (w srcTree) symlink(rel, target string) {
	w.t.Helper()
	p := filepath.Join(w.dir, rel)
	must(w.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(w.t, os.Symlink(target, p))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// randBytes is n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

const bigSize = 1<<20 + 3

// item is one item added to the fixture store.
type item struct {
	src  string // the source it was added from
	base string // its store base name (<hash>-<name>)
}

// fixture is a store with the standard items.
type fixture struct {
	s     *store.Store
	items map[string]item // by name: tree, twin, bare-file, tool, top-link (and many)
	names []string        // the item names, in the order added
	big   []byte          // contents of tree/big and twin/big-copy
}

// newFixture creates a store holding:
//
//   - tree: unicode and spaced names, empty files and dirs, exec files,
//     symlinks (relative, absolute, dangling), nested dirs, files of 0, 1, 8,
//     4096 and 1 MiB+3 bytes;
//   - twin: files identical to some in tree (shared.txt, big-copy), one
//     differing from tree's only in its exec bit (shared-exec), and a
//     directory sub identical to tree's;
//   - bare-file and tool: items that are a single file (tool executable);
//   - top-link: an item that is a symlink (to tree/regular.txt);
//   - many (o.many): a directory of 2000 entries.
//
// fixtureOptions vary the fixture.
type fixtureOptions struct {
	many       bool // add the item "many"
	noDangling bool // leave out the dangling symlinks
	bigSize    int  // the size of tree/big and twin/big-copy, when not bigSize
}

func newFixture(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	s := newStore(t)
	n := bigSize
	if o.bigSize != 0 {
		n = o.bigSize
	}
	fx := &fixture{s: s, items: map[string]item{}, big: randBytes(1, n)}
	srcDir := filepath.Join(scratchDir(t), "src")

	tree := srcTree{t, filepath.Join(srcDir, "tree")}
	tree.file("regular.txt", []byte("hello world\n"), 0o644)
	tree.file("run.sh", []byte("#!/bin/sh\necho hi\n"), 0o755)
	tree.file("name with spaces ü é 日本.txt", []byte("unicode + spaces\n"), 0o644)
	tree.file("dir with spaces/ünïcödé 文件", []byte("x"), 0o644)
	tree.file("empty-file", nil, 0o644)
	tree.file("empty-exec", nil, 0o755)
	tree.mkdir("empty-dir")
	tree.file("one", []byte("1"), 0o644)
	tree.file("eight", []byte("12345678"), 0o644)
	tree.file("page", randBytes(2, 4096), 0o644)
	tree.file("big", fx.big, 0o644)
	tree.symlink("link-rel", "regular.txt")
	tree.symlink("link-abs", "/etc/passwd")
	if !o.noDangling {
		tree.symlink("link-abs-dangling", "/nonexistent/target")
		tree.symlink("link-dangling", "no/such/file")
	}
	tree.file("nested/a/b/c/deep.txt", []byte("deep\n"), 0o644)
	tree.symlink("nested/a/b/up-link", "../../../regular.txt")
	tree.mkdir("nested/a/empty")
	tree.file("shared.txt", []byte("shared content\n"), 0o644)
	tree.file("shared-exec", []byte("#!/bin/sh\nexit 0\n"), 0o755)
	tree.file("sub/x.txt", []byte("x\n"), 0o644)
	tree.file("sub/y/z", []byte("z\n"), 0o755)
	tree.symlink("sub/l", "x.txt")
	tree.file("bare-copy", []byte("just a file\n"), 0o644) // the item bare-file

	twin := srcTree{t, filepath.Join(srcDir, "twin")}
	twin.file("shared.txt", []byte("shared content\n"), 0o644)
	twin.file("shared-exec", []byte("#!/bin/sh\nexit 0\n"), 0o644)
	twin.file("big-copy", fx.big, 0o644)
	twin.file("sub/x.txt", []byte("x\n"), 0o644)
	twin.file("sub/y/z", []byte("z\n"), 0o755)
	twin.symlink("sub/l", "x.txt")

	top := srcTree{t, srcDir}
	top.file("bare-file", []byte("just a file\n"), 0o644)
	top.file("tool", []byte("#!/bin/sh\necho tool\n"), 0o755)

	names := []string{"tree", "twin", "bare-file", "tool", "top-link"}
	if o.many {
		many := srcTree{t, filepath.Join(srcDir, "many")}
		for i := range 2000 {
			// 40-byte names: a 4 KiB getdents buffer holds about 70
			many.file(fmt.Sprintf("entry-%034d", i), []byte(fmt.Sprint(i%7)), 0o644)
		}
		names = append(names, "many")
	}
	for _, name := range names {
		src := filepath.Join(srcDir, name)
		if name == "top-link" { // a sibling's file, as store symlinks often are
			top.symlink(name, fx.items["tree"].base+"/regular.txt")
		}
		p, err := s.Add(context.Background(), src, store.AddOptions{Name: name})
		if err != nil {
			t.Fatalf("Add(%s): %v", src, err)
		}
		fx.items[name] = item{src: src, base: filepath.Base(p)}
		fx.names = append(fx.names, name)
	}
	return fx
}

// blobPath is where the blob of a regular source file lives.
func blobPath(t *testing.T, s *store.Store, src string) string {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	sum, err := nar.HashFile(fi.Mode()&0o100 != 0, fi.Size(), f)
	if err != nil {
		t.Fatal(err)
	}
	return s.Blobs().Path(cas.Key(sum))
}

// --- inspection ---------------------------------------------------------

func lstat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

func narOf(t *testing.T, p string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := nar.DumpPath(&b, p); err != nil {
		t.Fatalf("nar.DumpPath(%s): %v", p, err)
	}
	return b.Bytes()
}

// dirent is one entry read with getdents64.
type dirent struct {
	ino  uint64
	off  int64
	typ  uint8
	name string
}

// parseDirents parses a getdents64 buffer.
func parseDirents(buf []byte) []dirent {
	var out []dirent
	for len(buf) >= 19 {
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			break
		}
		name := buf[19:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		out = append(out, dirent{
			ino:  binary.NativeEndian.Uint64(buf[0:8]),
			off:  int64(binary.NativeEndian.Uint64(buf[8:16])),
			typ:  buf[18],
			name: string(name),
		})
		buf = buf[reclen:]
	}
	return out
}

// readDirents reads a directory's entries with getdents64 in small buffers,
// in directory order.
func readDirentsFd(fd int) ([]dirent, error) {
	buf := make([]byte, 4096)
	var out []dirent
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, parseDirents(buf[:n])...)
	}
}

func readDirents(t *testing.T, dir string) []dirent {
	t.Helper()
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	defer syscall.Close(fd)
	ents, err := readDirentsFd(fd)
	if err != nil {
		t.Fatalf("getdents %s: %v", dir, err)
	}
	return ents
}

// direntType is the d_type of a file mode.
func direntType(mode uint32) uint8 {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return syscall.DT_REG
	case syscall.S_IFDIR:
		return syscall.DT_DIR
	case syscall.S_IFLNK:
		return syscall.DT_LNK
	}
	return syscall.DT_UNKNOWN
}

// inodes maps every path below dir (relative, "." for dir) to its st_ino.
func inodes(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = lstat(t, p).Ino
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// walkAll lstats every path below dir, reads every readEvery-th regular
// file (none when 0), and returns the number of paths.
func walkAll(dir string, readEvery int) (int, error) {
	n, files := 0, 0
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		if _, err := d.Info(); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files++
			if readEvery > 0 && files%readEvery == 0 {
				if _, err := os.ReadFile(p); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}

// errnoOf extracts the errno of a failed system call (or zero).
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// sortedNames returns the names of a directory's entries, sorted.
func sortedNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir %s: %v", dir, err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	slices.Sort(names)
	return names
}

// eventually polls cond until it holds or d passed.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
