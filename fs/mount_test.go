package fs_test

import (
	"bytes"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	sfs "github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/store"
)

// checkOwnTimes checks what every node of the view has in common: mtime 1
// (ctime and atime too) and the mounting user as owner.
func checkOwnTimes(t *testing.T, p string, st *syscall.Stat_t) {
	t.Helper()
	if st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
		t.Errorf("%s: mtime = %d.%09d, want 1", p, st.Mtim.Sec, st.Mtim.Nsec)
	}
	if st.Ctim.Sec != 1 {
		t.Errorf("%s: ctime = %d, want 1", p, st.Ctim.Sec)
	}
	if st.Uid != uint32(os.Getuid()) || st.Gid != uint32(os.Getgid()) {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, os.Getuid(), os.Getgid())
	}
}

// compareTree checks that the mounted item at mnt is exactly the source
// tree at src: names, types, permissions, symlink targets, bytes, sizes,
// times and owners.
func compareTree(t *testing.T, src, mnt string) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(src, func(sp string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		seen++
		rel, _ := filepath.Rel(src, sp)
		mp := filepath.Join(mnt, rel)
		sst, mst := lstat(t, sp), lstat(t, mp)
		checkOwnTimes(t, mp, mst)
		styp, mtyp := sst.Mode&syscall.S_IFMT, mst.Mode&syscall.S_IFMT
		if styp != mtyp {
			t.Errorf("%s: type %o, want %o", mp, mtyp, styp)
			return nil
		}
		perm := mst.Mode & 0o7777
		switch styp {
		case syscall.S_IFREG:
			want := uint32(0o444)
			if sst.Mode&0o100 != 0 {
				want = 0o555
			}
			if perm != want {
				t.Errorf("%s: mode %04o, want %04o", mp, perm, want)
			}
			if mst.Size != sst.Size {
				t.Errorf("%s: size %d, want %d", mp, mst.Size, sst.Size)
			}
			got, err := os.ReadFile(mp)
			if err != nil {
				t.Errorf("read %s: %v", mp, err)
				return nil
			}
			want2, _ := os.ReadFile(sp)
			if !bytes.Equal(got, want2) {
				t.Errorf("%s: contents differ from %s (%d vs %d bytes)", mp, sp, len(got), len(want2))
			}
		case syscall.S_IFDIR:
			if perm != 0o555 {
				t.Errorf("%s: mode %04o, want 0555", mp, perm)
			}
			if got, want := sortedNames(t, mp), sortedNames(t, sp); !slices.Equal(got, want) {
				t.Errorf("%s: entries %q, want %q", mp, got, want)
			}
		case syscall.S_IFLNK:
			if perm != 0o777 {
				t.Errorf("%s: mode %04o, want 0777", mp, perm)
			}
			got, err := os.Readlink(mp)
			want, _ := os.Readlink(sp)
			if err != nil || got != want {
				t.Errorf("readlink %s = %q, %v; want %q", mp, got, err, want)
			}
			if mst.Size != int64(len(want)) {
				t.Errorf("%s: symlink size %d, want %d", mp, mst.Size, len(want))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", src, err)
	}
	if seen == 0 {
		t.Fatalf("nothing compared below %s", src)
	}
}

// TestExact: every item reads back exactly as it was added.
func TestExact(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{})
	m := mountStore(t, fx.s)

	st := lstat(t, m.dir)
	if st.Mode != syscall.S_IFDIR|0o555 || st.Ino != 1 {
		t.Errorf("root: mode %o ino %d, want %o ino 1", st.Mode, st.Ino, syscall.S_IFDIR|0o555)
	}
	checkOwnTimes(t, m.dir, st)

	var bases []string
	for _, name := range fx.names {
		it := fx.items[name]
		bases = append(bases, it.base)
		t.Run(name, func(t *testing.T) {
			mp := m.path(it.base)
			compareTree(t, it.src, mp)
			if got, want := narOf(t, mp), narOf(t, it.src); !bytes.Equal(got, want) {
				t.Errorf("NAR of %s (%d bytes) differs from NAR of the source (%d bytes)", mp, len(got), len(want))
			}
		})
	}
	slices.Sort(bases)
	if got := sortedNames(t, m.dir); !slices.Equal(got, bases) {
		t.Errorf("root lists %q, want %q", got, bases)
	}

	// a name that is not a valid path, and a path below a missing one
	for _, p := range []string{
		m.path("00000000000000000000000000000000-nothing"),
		m.path("not-a-store-path"),
		m.path(fx.items["tree"].base, "no-such-entry"),
		m.path(fx.items["tree"].base, "nested", "a", "nope"),
	} {
		if _, err := os.Lstat(p); errnoOf(err) != syscall.ENOENT {
			t.Errorf("lstat %s: %v, want ENOENT", p, err)
		}
	}
	// a file is not a directory
	if _, err := os.Lstat(m.path(fx.items["bare-file"].base, "x")); errnoOf(err) != syscall.ENOTDIR {
		t.Errorf("lstat below a file item: %v, want ENOTDIR", err)
	}

	var sfst syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &sfst); err != nil {
		t.Errorf("statfs: %v", err)
	} else if sfst.Namelen != 255 {
		t.Errorf("statfs: namelen %d, want 255", sfst.Namelen)
	}
}

// TestFSTest runs testing/fstest over the mount.
func TestFSTest(t *testing.T) {
	requireFUSE(t)
	// os.DirFS follows symlinks on Open, so a dangling one is an error
	// to fstest: leave them out. fstest reads every file in many ways,
	// which takes seconds for a MiB: keep the big files small.
	fx := newFixture(t, fixtureOptions{noDangling: true, bigSize: 16<<10 + 3})
	m := mountStore(t, fx.s)
	tree, twin := fx.items["tree"].base, fx.items["twin"].base
	expected := []string{
		fx.items["bare-file"].base,
		fx.items["tool"].base,
		fx.items["top-link"].base,
		tree,
		tree + "/regular.txt",
		tree + "/run.sh",
		tree + "/name with spaces ü é 日本.txt",
		tree + "/dir with spaces/ünïcödé 文件",
		tree + "/empty-file",
		tree + "/empty-dir",
		tree + "/big",
		tree + "/link-rel",
		tree + "/link-abs",
		tree + "/nested/a/b/c/deep.txt",
		tree + "/nested/a/empty",
		twin + "/big-copy",
		twin + "/sub/y/z",
	}
	if err := fstest.TestFS(os.DirFS(m.dir), expected...); err != nil {
		t.Error(err)
	}
	// one item on its own, as a file system of its own
	if err := fstest.TestFS(os.DirFS(m.path(tree)), "regular.txt", "sub/x.txt", "page"); err != nil {
		t.Error(err)
	}
}

// TestIdentity: inode numbers follow content for files and (item, path) for
// directories and symlinks, readdir agrees with stat, and numbers survive a
// remount.
func TestIdentity(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{})
	m := mountStore(t, fx.s)
	tree, twin := fx.items["tree"].base, fx.items["twin"].base
	ino := func(elem ...string) uint64 { return lstat(t, m.path(elem...)).Ino }

	for _, c := range []struct{ a, b []string }{
		{[]string{tree, "shared.txt"}, []string{twin, "shared.txt"}},
		{[]string{tree, "big"}, []string{twin, "big-copy"}},
		{[]string{tree, "sub", "x.txt"}, []string{twin, "sub", "x.txt"}},
		{[]string{tree, "sub", "y", "z"}, []string{twin, "sub", "y", "z"}},
		{[]string{fx.items["bare-file"].base}, []string{tree, "bare-copy"}}, // an item and a file in another
	} {
		if a, b := ino(c.a...), ino(c.b...); a != b {
			t.Errorf("identical files %s and %s: inodes %d and %d, want one", filepath.Join(c.a...), filepath.Join(c.b...), a, b)
		}
	}
	for _, c := range []struct{ a, b []string }{
		{[]string{tree, "shared-exec"}, []string{twin, "shared-exec"}}, // exec bit only
		{[]string{tree, "empty-file"}, []string{tree, "empty-exec"}},   // exec bit only
		{[]string{tree, "sub"}, []string{twin, "sub"}},                 // identical dirs
		{[]string{tree, "sub", "y"}, []string{twin, "sub", "y"}},
		{[]string{tree, "sub", "l"}, []string{twin, "sub", "l"}}, // identical symlinks
		{[]string{tree, "empty-dir"}, []string{tree, "nested", "a", "empty"}},
	} {
		if a, b := ino(c.a...), ino(c.b...); a == b {
			t.Errorf("%s and %s share inode %d, want distinct", filepath.Join(c.a...), filepath.Join(c.b...), a)
		}
	}

	// Directories and symlinks never share a number (with each other or
	// with a file); files share one exactly when their contents and exec
	// bits are equal.
	byIno := map[uint64]string{}
	content := map[uint64]string{}
	err := filepath.WalkDir(m.dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st := lstat(t, p)
		if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			c := string(b) + "\x00" + string(rune('0'+st.Mode&0o111/0o111))
			if prev, ok := content[st.Ino]; ok && prev != c {
				t.Errorf("%s: inode %d shared with a file of other contents", p, st.Ino)
			}
			content[st.Ino] = c
			if prev, ok := byIno[st.Ino]; ok && !strings.HasPrefix(prev, "file:") {
				t.Errorf("%s: inode %d also used by %s", p, st.Ino, prev)
			}
			byIno[st.Ino] = "file:" + p
			return nil
		}
		if prev, ok := byIno[st.Ino]; ok {
			t.Errorf("%s: inode %d also used by %s", p, st.Ino, prev)
		}
		byIno[st.Ino] = p
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	seenContent := map[string]uint64{}
	for ino, c := range content {
		if prev, ok := seenContent[c]; ok {
			t.Errorf("identical files have inodes %d and %d", prev, ino)
		}
		seenContent[c] = ino
	}

	// d_ino == st_ino and d_type matches, in the root and in every
	// directory of every item
	checkDirents := func(t *testing.T, dir string) {
		t.Helper()
		ents := readDirents(t, dir)
		names := make([]string, 0, len(ents))
		for _, e := range ents {
			if e.name == "." || e.name == ".." {
				continue
			}
			names = append(names, e.name)
			st := lstat(t, filepath.Join(dir, e.name))
			if e.ino != st.Ino {
				t.Errorf("%s/%s: d_ino %d, st_ino %d", dir, e.name, e.ino, st.Ino)
			}
			if want := direntType(st.Mode); e.typ != want {
				t.Errorf("%s/%s: d_type %d, want %d", dir, e.name, e.typ, want)
			}
		}
		slices.Sort(names)
		if want := sortedNames(t, dir); !slices.Equal(names, want) {
			t.Errorf("%s: getdents gave %q, readdir %q", dir, names, want)
		}
	}
	checkDirents(t, m.dir)
	err = filepath.WalkDir(m.dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != m.dir {
			checkDirents(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// the same numbers after a remount
	before := inodes(t, m.dir)
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	m2 := mountStoreAt(t, fx.s, m.dir)
	after := inodes(t, m2.dir)
	if len(after) != len(before) {
		t.Errorf("remount: %d paths, want %d", len(after), len(before))
	}
	for p, i := range before {
		if after[p] != i {
			t.Errorf("remount: %s has inode %d, was %d", p, after[p], i)
		}
	}
}

// mutations is every mutating system call, aimed at existing nodes of the
// given kinds (any may be "": the calls needing it are left out) and new
// names in dir.
func mutations(dir, file, emptyDir, link, other string) map[string]func() error {
	nw := func(n string) string { return filepath.Join(dir, n) }
	openErr := func(p string, flags int) func() error {
		return func() error {
			f, err := os.OpenFile(p, flags, 0o644)
			if err == nil {
				f.Close()
			}
			return err
		}
	}
	ops := map[string]func() error{
		"create":          openErr(nw("new-file"), os.O_CREATE|os.O_EXCL|os.O_WRONLY),
		"create-rdonly":   openErr(nw("new-file2"), os.O_CREATE|os.O_RDONLY),
		"mkdir":           func() error { return os.Mkdir(nw("new-dir"), 0o755) },
		"symlink":         func() error { return os.Symlink("target", nw("new-link")) },
		"mknod":           func() error { return unix.Mknod(nw("new-fifo"), unix.S_IFIFO|0o644, 0) },
		"chmod-dir":       func() error { return os.Chmod(dir, 0o755) },
		"chown-dir":       func() error { return os.Lchown(dir, os.Getuid(), os.Getgid()) },
		"utimes-dir":      func() error { return os.Chtimes(dir, time.Unix(5, 0), time.Unix(5, 0)) },
		"setxattr-dir":    func() error { return unix.Setxattr(dir, "user.storefs-test", []byte("x"), 0) },
		"removexattr-dir": func() error { return unix.Removexattr(dir, "user.storefs-test") },
	}
	if file != "" {
		ops["open-wronly"] = openErr(file, os.O_WRONLY)
		ops["open-rdwr"] = openErr(file, os.O_RDWR)
		ops["open-append"] = openErr(file, os.O_WRONLY|os.O_APPEND)
		ops["open-trunc"] = openErr(file, os.O_RDONLY|os.O_TRUNC)
		ops["open-creat-existing"] = openErr(file, os.O_WRONLY|os.O_CREATE)
		ops["unlink"] = func() error { return syscall.Unlink(file) }
		ops["rename-file"] = func() error { return os.Rename(file, nw("renamed")) }
		if other != "" {
			ops["rename-exchange"] = func() error {
				return unix.Renameat2(unix.AT_FDCWD, file, unix.AT_FDCWD, other, unix.RENAME_EXCHANGE)
			}
			ops["rename-over"] = func() error { return os.Rename(file, other) }
		}
		ops["chmod"] = func() error { return os.Chmod(file, 0o644) }
		ops["chown"] = func() error { return os.Lchown(file, os.Getuid(), os.Getgid()) }
		ops["truncate"] = func() error { return os.Truncate(file, 0) }
		ops["utimes"] = func() error { return os.Chtimes(file, time.Unix(5, 0), time.Unix(5, 0)) }
		ops["setxattr"] = func() error { return unix.Setxattr(file, "user.storefs-test", []byte("x"), 0) }
		ops["removexattr"] = func() error { return unix.Removexattr(file, "user.storefs-test") }
		ops["link"] = func() error { return os.Link(file, nw("new-hardlink")) }
	}
	if emptyDir != "" {
		ops["rmdir"] = func() error { return syscall.Rmdir(emptyDir) }
		ops["rename-dir"] = func() error { return os.Rename(emptyDir, nw("renamed-dir")) }
	}
	if link != "" {
		ops["unlink-symlink"] = func() error { return syscall.Unlink(link) }
		ops["lchown-symlink"] = func() error { return os.Lchown(link, os.Getuid(), os.Getgid()) }
		ops["rename-symlink"] = func() error { return os.Rename(link, nw("renamed-link")) }
	}
	return ops
}

func checkEROFS(t *testing.T, where string, ops map[string]func() error) {
	t.Helper()
	names := make([]string, 0, len(ops))
	for n := range ops {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		err := ops[n]()
		if errnoOf(err) != syscall.EROFS {
			t.Errorf("%s: %s: got %v, want EROFS", where, n, err)
		}
	}
}

// TestReadOnly: every mutation fails with EROFS, in the root and in items,
// and the mount is ro,nosuid,nodev.
func TestReadOnly(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{})
	m := mountStore(t, fx.s)
	tree, bare, link := fx.items["tree"].base, fx.items["bare-file"].base, fx.items["top-link"].base

	opts := mountInfoOptions(t, m.dir)
	for _, want := range []string{"ro", "nosuid", "nodev"} {
		if !slices.Contains(opts, want) {
			t.Errorf("mount options %q lack %s", opts, want)
		}
	}

	checkEROFS(t, "root", mutations(m.dir, m.path(bare), m.path(tree), m.path(link), m.path(fx.items["tool"].base)))
	checkEROFS(t, "item", mutations(m.path(tree), m.path(tree, "regular.txt"), m.path(tree, "empty-dir"), m.path(tree, "link-rel"), m.path(tree, "one")))
	checkEROFS(t, "nested", mutations(m.path(tree, "nested", "a"), m.path(tree, "empty-file"), m.path(tree, "nested", "a", "empty"), m.path(tree, "nested", "a", "b", "up-link"), ""))

	if err := unix.Access(m.path(tree, "regular.txt"), unix.W_OK); errnoOf(err) != syscall.EROFS {
		t.Errorf("access(W_OK): %v, want EROFS", err)
	}
	if err := unix.Access(m.path(tree, "regular.txt"), unix.R_OK); err != nil {
		t.Errorf("access(R_OK): %v", err)
	}
	if err := unix.Access(m.path(tree, "regular.txt"), unix.X_OK); errnoOf(err) != syscall.EACCES {
		t.Errorf("access(X_OK) of a 0444 file: %v, want EACCES", err)
	}
	if err := unix.Access(m.path(tree, "run.sh"), unix.X_OK); err != nil {
		t.Errorf("access(X_OK) of a 0555 file: %v", err)
	}

	// nothing changed
	for _, name := range fx.names {
		it := fx.items[name]
		if !bytes.Equal(narOf(t, m.path(it.base)), narOf(t, it.src)) {
			t.Errorf("%s changed", name)
		}
	}
}

// TestReadOnlyHandlers mounts the view without "ro" (as someone might
// mount it another way), so that the kernel passes mutations on: the nodes
// themselves must refuse them with EROFS.
func TestReadOnlyHandlers(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{})
	dir := t.TempDir()
	root := sfs.NewRoot(fx.s.Registry(), fx.s.Blobs(), fx.s.StoreDir(), sfs.Options{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	var zero time.Duration
	srv, err := gofs.Mount(dir, root, &gofs.Options{
		MountOptions: fuse.MountOptions{
			FsName:      "storefs-rw-test",
			Name:        "storefs",
			DirectMount: os.Geteuid() == 0,
		},
		NegativeTimeout: &zero,
		UID:             uint32(os.Getuid()),
		GID:             uint32(os.Getgid()),
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
	})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	m := &mount{dir: dir, root: root, srv: srv, s: fx.s}
	t.Cleanup(func() {
		if err := m.unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	if opts := mountInfoOptions(t, dir); slices.Contains(opts, "ro") {
		t.Fatalf("mounted ro anyway (%q): this test needs a writable mount", opts)
	}
	tree, bare, link := fx.items["tree"].base, fx.items["bare-file"].base, fx.items["top-link"].base
	checkEROFS(t, "root", mutations(m.dir, m.path(bare), m.path(tree), m.path(link), m.path(fx.items["tool"].base)))
	checkEROFS(t, "item", mutations(m.path(tree), m.path(tree, "regular.txt"), m.path(tree, "empty-dir"), m.path(tree, "link-rel"), m.path(tree, "one")))
	checkEROFS(t, "empty file", map[string]func() error{
		"open-wronly": func() error {
			f, err := os.OpenFile(m.path(tree, "empty-file"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"truncate": func() error { return os.Truncate(m.path(tree, "empty-file"), 10) },
	})
	for _, name := range fx.names {
		it := fx.items[name]
		if !bytes.Equal(narOf(t, m.path(it.base)), narOf(t, it.src)) {
			t.Errorf("%s changed", name)
		}
	}
}

// TestReadahead: as root, Mount raises the mount's readahead window to 1
// MiB (the kernel's default for a FUSE mount is 128 KiB, whatever INIT
// asks), so a sequential read of a file the kernel has not cached comes in
// READs of up to 1 MiB as the window grows: a cold read of 8 MiB is a dozen
// of them, not 64 or more.
func TestReadahead(t *testing.T) {
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("only root can set a mount's readahead (/sys/class/bdi); Mount leaves the default then")
	}
	s := newStore(t)
	content := randBytes(41, 8<<20)
	src := filepath.Join(t.TempDir(), "seq")
	must(t, os.WriteFile(src, content, 0o644))
	p, err := s.Add(t.Context(), src, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := mountStore(t, s)
	var st unix.Stat_t
	must(t, unix.Stat(m.dir, &st))
	ra, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(ra)); got != "1024" {
		t.Errorf("read_ahead_kb of the mount: %s, want 1024", got)
	}
	f, err := os.Open(m.path(filepath.Base(p)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := m.root.ReadsServed()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	if n := m.root.ReadsServed() - before; n > 24 {
		t.Errorf("a cold sequential read of 8 MiB: %d reads served, want at most 24 (most of 1 MiB)", n)
	}
}
