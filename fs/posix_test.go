package fs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// The mmap check runs in a child process (the test binary again): a page
// fault on a FUSE file in the serving process can deadlock it.
const (
	mmapEnv     = "STOREFS_FS_TEST_MMAP_FILE"
	mmapWantEnv = "STOREFS_FS_TEST_MMAP_WANT"
)

func TestMain(m *testing.M) {
	if p := os.Getenv(mmapEnv); p != "" {
		os.Exit(mmapChild(p, os.Getenv(mmapWantEnv)))
	}
	os.Exit(m.Run())
}

// mmapChild maps the file read-only, whole and from its second page on, and
// compares the sha256 of each with want ("<whole>:<from 4096>").
func mmapChild(p, want string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "mmap child: "+format+"\n", args...)
		return 1
	}
	f, err := os.Open(p)
	if err != nil {
		return fail("%v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fail("%v", err)
	}
	var got []string
	for _, off := range []int64{0, 4096} {
		if off >= fi.Size() {
			got = append(got, hex.EncodeToString(sha256.New().Sum(nil)))
			continue
		}
		data, err := syscall.Mmap(int(f.Fd()), off, int(fi.Size()-off), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			return fail("mmap %s at %d: %v", p, off, err)
		}
		sum := sha256.Sum256(data)
		got = append(got, hex.EncodeToString(sum[:]))
		if err := syscall.Munmap(data); err != nil {
			return fail("munmap: %v", err)
		}
	}
	if g := strings.Join(got, ":"); g != want {
		return fail("%s: mapped contents hash to %s, want %s", p, g, want)
	}
	return 0
}

// TestPosix is the read-only part of go-fuse's posixtest, and equivalents
// of the parts that create their files first.
func TestPosix(t *testing.T) {
	requireFUSE(t)
	fx := newFixture(t, fixtureOptions{many: true})
	m := mountStore(t, fx.s)
	tree, many := m.path(fx.items["tree"].base), m.path(fx.items["many"].base)
	manyNames := sortedNames(t, fx.items["many"].src)

	t.Run("ReadDirConsistency", func(t *testing.T) {
		for _, d := range []string{m.dir, tree, many, filepath.Join(tree, "empty-dir")} {
			posixtest.ReadDirConsistency(t, d)
		}
	})

	t.Run("LargeDirChunks", func(t *testing.T) {
		f, err := os.Open(many)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		read := func() []string {
			var all []string
			for {
				names, err := f.Readdirnames(97)
				all = append(all, names...)
				if err == io.EOF {
					return all
				}
				if err != nil {
					t.Fatalf("Readdirnames: %v", err)
				}
				if len(names) == 0 {
					t.Fatal("Readdirnames: no names and no EOF")
				}
			}
		}
		first := read()
		sorted := slices.Clone(first)
		slices.Sort(sorted)
		if !slices.Equal(sorted, manyNames) {
			t.Fatalf("got %d names (%d distinct?), want the %d of the source", len(first), len(slices.Compact(sorted)), len(manyNames))
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil { // rewinddir
			t.Fatal(err)
		}
		if again := read(); !slices.Equal(again, first) {
			t.Errorf("after rewind: %d names, differing from the first %d", len(again), len(first))
		}
	})

	// DirSeek is posixtest.DirSeek (xfstests generic/257) on existing
	// directories: seeking to each entry's offset reads that entry next;
	// then rewinddir and read all again. A failed seekdir or getdents is
	// returned; wrong entries fail the test.
	dirSeek := func(t *testing.T, dir string) error {
		fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		ents, err := readDirentsFd(fd)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) < 2 {
			t.Fatalf("%s: %d entries, want a few", dir, len(ents))
		}
		buf := make([]byte, 4096)
		for i := len(ents) - 1; i >= 0; i-- {
			var to int64
			if i > 0 {
				to = ents[i-1].off
			}
			if _, err := unix.Seek(fd, to, io.SeekStart); err != nil {
				return fmt.Errorf("seekdir(%d): %w", to, err)
			}
			n, err := unix.ReadDirent(fd, buf)
			if err != nil {
				return fmt.Errorf("getdents after seekdir(%d) (entry %d of %d): %w", to, i, len(ents), err)
			}
			got := parseDirents(buf[:n])
			if len(got) == 0 || got[0] != ents[i] {
				t.Fatalf("after seekdir(%d): got %v, want %v", to, got[:min(1, len(got))], ents[i])
			}
		}
		if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
			return fmt.Errorf("rewinddir: %w", err)
		}
		again, err := readDirentsFd(fd)
		if err != nil {
			return fmt.Errorf("getdents after rewinddir: %w", err)
		}
		if !slices.Equal(again, ents) {
			t.Errorf("after rewind: %d entries, want the same %d", len(again), len(ents))
		}
		return nil
	}
	t.Run("DirSeek/item", func(t *testing.T) {
		if err := dirSeek(t, many); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("DirSeek/root", func(t *testing.T) {
		err := dirSeek(t, m.dir)
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("EmptyDir", func(t *testing.T) {
		for _, d := range []string{filepath.Join(tree, "empty-dir"), filepath.Join(tree, "nested", "a", "empty")} {
			if ents := readDirents(t, d); len(ents) != 0 {
				t.Errorf("%s: %v, want no entries", d, ents)
			}
		}
	})

	t.Run("SymlinkReadlink", func(t *testing.T) {
		for _, rel := range []string{"link-rel", "link-abs", "link-abs-dangling", "link-dangling", "sub/l", "nested/a/b/up-link"} {
			want, _ := os.Readlink(filepath.Join(fx.items["tree"].src, rel))
			for range 2 { // the second from the kernel's cache
				if got, err := os.Readlink(filepath.Join(tree, rel)); err != nil || got != want {
					t.Errorf("readlink %s = %q, %v; want %q", rel, got, err, want)
				}
			}
		}
		for _, rel := range []string{"link-rel", "nested/a/b/up-link", "sub/l"} {
			src, _ := os.ReadFile(filepath.Join(fx.items["tree"].src, rel))
			if got, err := os.ReadFile(filepath.Join(tree, rel)); err != nil || !bytes.Equal(got, src) {
				t.Errorf("read through %s: %q, %v; want %q", rel, got, err, src)
			}
		}
		if got, err := os.ReadFile(m.path(fx.items["top-link"].base)); err != nil || string(got) != "hello world\n" {
			t.Errorf("read through the top-level symlink item: %q, %v", got, err)
		}
		if _, err := os.Readlink(filepath.Join(tree, "regular.txt")); errnoOf(err) != syscall.EINVAL {
			t.Errorf("readlink of a regular file: %v, want EINVAL", err)
		}
		if _, err := os.Stat(filepath.Join(tree, "link-dangling")); errnoOf(err) != syscall.ENOENT {
			t.Errorf("stat through a dangling link: %v, want ENOENT", err)
		}
	})

	t.Run("OpenAt", func(t *testing.T) {
		dfd, err := unix.Open(tree, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(dfd)
		fd, err := unix.Openat(dfd, "nested/a/b/c/deep.txt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "deep.txt")
		defer f.Close()
		if b, err := io.ReadAll(f); err != nil || string(b) != "deep\n" {
			t.Errorf("read via openat: %q, %v", b, err)
		}
		if _, err := unix.Openat(dfd, "nested/../missing", unix.O_RDONLY, 0); errnoOf(err) != syscall.ENOENT {
			t.Errorf("openat missing: %v, want ENOENT", err)
		}
	})

	// the file reads, served on each read path
	for _, rp := range readPaths() {
		mm := m
		if rp != noOpen {
			mm = mountStoreWith(t, fx.s, t.TempDir(), rp)
		}
		t.Run(string(rp), func(t *testing.T) {
			readTests(t, fx, mm, rp)
		})
	}
}

// readTests read the files of the item tree mounted at tree.
func readTests(t *testing.T, fx *fixture, m *mount, rp readPath) {
	tree := m.path(fx.items["tree"].base)
	bigPath := filepath.Join(tree, "big")
	t.Run("PreadOddOffsets", func(t *testing.T) {
		f, err := os.Open(bigPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		big := fx.big
		offs := []int64{0, 1, 3, 7, 511, 4095, 4096, 4097, 65535, 131071, 1<<20 - 1, 1 << 20, int64(len(big)) - 1, int64(len(big)), int64(len(big)) + 10}
		lens := []int{1, 3, 13, 4095, 4097, 100003, 1<<20 + 17}
		for _, off := range offs {
			for _, l := range lens {
				buf := make([]byte, l)
				n, err := f.ReadAt(buf, off)
				want := big[min(off, int64(len(big))):min(off+int64(l), int64(len(big)))]
				if n != len(want) || !bytes.Equal(buf[:n], want) {
					t.Errorf("pread(%d, %d): %d bytes (want %d), equal %v", off, l, n, len(want), bytes.Equal(buf[:n], want))
				}
				if (n < l) != (err == io.EOF) || (err != nil && err != io.EOF) {
					t.Errorf("pread(%d, %d): n %d, err %v", off, l, n, err)
				}
			}
		}
		// sequential reads of odd sizes
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		buf := make([]byte, 4093)
		for {
			n, err := f.Read(buf)
			got.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got.Bytes(), big) {
			t.Errorf("sequential read: %d bytes, differing", got.Len())
		}
		// the empty files
		for _, rel := range []string{"empty-file", "empty-exec"} {
			b, err := os.ReadFile(filepath.Join(tree, rel))
			if err != nil || len(b) != 0 {
				t.Errorf("%s: %q, %v", rel, b, err)
			}
		}
	})

	t.Run("Mmap", func(t *testing.T) {
		page, err := os.ReadFile(filepath.Join(fx.items["tree"].src, "page"))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			path string
			data []byte
		}{
			{bigPath, fx.big},
			{filepath.Join(tree, "page"), page},
		} {
			whole := sha256.Sum256(c.data)
			tail := sha256.Sum256(c.data[min(4096, len(c.data)):])
			want := hex.EncodeToString(whole[:]) + ":" + hex.EncodeToString(tail[:])
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), mmapEnv+"="+c.path, mmapWantEnv+"="+want)
			out, err := cmd.CombinedOutput()
			cancel()
			if err != nil {
				t.Errorf("mmap child for %s: %v\n%s", c.path, err, out)
			}
		}
	})

	t.Run("ConcurrentReaders", func(t *testing.T) {
		big := fx.big
		shared, err := os.Open(bigPath)
		if err != nil {
			t.Fatal(err)
		}
		defer shared.Close()
		// drop the cached pages, so that the readers reach the server
		unix.Fadvise(int(shared.Fd()), 0, 0, unix.FADV_DONTNEED)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 12 {
			wg.Go(func() {
				f := shared
				if g%2 == 0 { // half open their own descriptor
					var err error
					if f, err = os.Open(bigPath); err != nil {
						errs <- err
						return
					}
					defer f.Close()
				}
				chunk := 4093*(g+1) + g
				buf := make([]byte, chunk)
				for round := range 3 {
					// start at a different place each round, wrap around
					start := (round*len(big)/3 + g*7919) % len(big)
					for done := 0; done < len(big); {
						off := (start + done) % len(big)
						n, err := f.ReadAt(buf[:min(chunk, len(big)-off)], int64(off))
						if err != nil && err != io.EOF {
							errs <- fmt.Errorf("reader %d: pread(%d): %v", g, off, err)
							return
						}
						if !bytes.Equal(buf[:n], big[off:off+n]) {
							errs <- fmt.Errorf("reader %d: pread(%d, %d): wrong bytes", g, off, n)
							return
						}
						if n == 0 {
							errs <- fmt.Errorf("reader %d: pread(%d): no progress", g, off)
							return
						}
						done += n
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	// FdLeak: every open of a file holds its blob's descriptor in this
	// process; the release must give it back. The mount keeps idle
	// descriptors (blobFDs) until a collection drops them, so the check is
	// that after the opens are closed and the idle ones dropped, no more
	// blob descriptors are open than before. Only descriptors of blob
	// files count: go-fuse's splice pipe pool grows with concurrency, and
	// the earlier subtests' parallel readers leave pipes in it.
	t.Run("FdLeak", func(t *testing.T) {
		blobs := filepath.Join(fx.s.StateDir(), "blobs") + "/"
		count := func() int {
			ents, err := os.ReadDir("/proc/self/fd")
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, e := range ents {
				target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
				if err == nil && strings.HasPrefix(target, blobs) {
					n++
				}
			}
			return n
		}
		// What a collection does to the mount: it drops the idle
		// descriptors (the removed name is one no item has).
		dropIdle := func() { m.root.Changed(nil, []string{"00000000000000000000000000000000-none"}) }
		// Releases reach the server after close returns: wait for the
		// count to settle.
		settle := func() int {
			n := count()
			for range 50 {
				time.Sleep(20 * time.Millisecond)
				dropIdle()
				c := count()
				if c == n {
					break
				}
				n = c
			}
			return n
		}
		before := settle()
		f, err := os.Open(filepath.Join(tree, "big"))
		if err != nil {
			t.Fatal(err)
		}
		if rp == noOpen {
			// No handle: a read of pages the kernel lacks takes the
			// blob's descriptor, left idle after it.
			must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
			if _, err := f.Read(make([]byte, 4096)); err != nil {
				t.Fatal(err)
			}
		}
		// The count must see the blob a held file keeps open (or a read
		// left idle), or the check below proves nothing (big's descriptor
		// already held, by an earlier release that never came, shows as
		// this too).
		if held := count(); held <= before {
			t.Fatalf("%d blob descriptors before opening big, %d with it open", before, held)
		}
		f.Close()
		files := []string{"big", "page", "one", "empty-file", "shared.txt"}
		for i := range 300 {
			f, err := os.Open(filepath.Join(tree, files[i%len(files)]))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Read(make([]byte, 16)); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			f.Close()
		}
		var after int
		if !eventually(5*time.Second, func() bool { dropIdle(); after = count(); return after <= before }) {
			t.Errorf("%d blob descriptors open before 300 open/close cycles, %d after them and a collection", before, after)
		}
	})
}
