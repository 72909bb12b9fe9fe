package fs_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// liveInodes counts the inodes go-fuse knows below (and including) root.
func liveInodes(root *gofs.Inode) int {
	seen := map[*gofs.Inode]bool{}
	var walk func(n *gofs.Inode)
	walk = func(n *gofs.Inode) {
		if seen[n] {
			return
		}
		seen[n] = true
		for _, ch := range n.Children() {
			walk(ch)
		}
	}
	walk(root)
	return len(seen)
}

// TestMemory: go-fuse forgets the inodes of a walked tree when the kernel
// does, and walking it again does not grow the heap.
func TestMemory(t *testing.T) {
	requireFUSE(t)
	if testing.Short() {
		t.Skip("-short")
	}
	s := newStore(t)
	const dirs, files = 200, 100
	start := time.Now()
	src := filepath.Join(scratchDir(t), "lots")
	for d := range dirs {
		dir := filepath.Join(src, fmt.Sprintf("dir-%03d", d))
		must(t, os.MkdirAll(dir, 0o755))
		for f := range files {
			must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%03d", f)), fmt.Appendf(nil, "%d/%d\n", d, f), 0o644))
		}
	}
	p, err := s.Add(context.Background(), src, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("made and added %d files in %v", dirs*files, time.Since(start))
	m := mountStore(t, s)
	item := m.path(filepath.Base(p))

	start = time.Now()
	n, err := walkAll(item, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + dirs + dirs*files; n != want {
		t.Fatalf("walk saw %d paths, want %d", n, want)
	}
	live := liveInodes(&m.root.Inode)
	t.Logf("first walk (lstat of %d paths): %v; go-fuse holds %d inodes", n, time.Since(start), live)
	if live < dirs*files/2 {
		t.Logf("go-fuse holds only %d inodes after the walk (the kernel forgot early?)", live)
	}

	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Logf("not checking that inodes are forgotten: cannot drop the kernel's dentries and inodes: %v", err)
	} else {
		var after int
		if !eventually(10*time.Second, func() bool {
			after = liveInodes(&m.root.Inode)
			return after < 100
		}) {
			t.Errorf("after drop_caches: go-fuse still holds %d of %d inodes (not forgotten)", after, live)
		} else {
			t.Logf("after drop_caches: go-fuse holds %d inodes", after)
		}
	}

	var before, afterMS runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start = time.Now()
	if _, err := walkAll(item, 10); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&afterMS)
	grew := int64(afterMS.HeapInuse) - int64(before.HeapInuse)
	t.Logf("second walk (lstat, and read every 10th file): %v; heap in use %d MiB -> %d MiB; go-fuse holds %d inodes",
		time.Since(start), before.HeapInuse>>20, afterMS.HeapInuse>>20, liveInodes(&m.root.Inode))
	if grew > 64<<20 {
		t.Errorf("heap grew by %d MiB over a second walk, want at most 64 MiB", grew>>20)
	}
}

// tinyNAR is the archive of a single regular file.
func tinyNAR(t *testing.T, data []byte) []byte {
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	must(t, w.RegularBytes(false, data))
	must(t, w.Close())
	return b.Bytes()
}

// TestRootListing: a root of some thousands of items lists completely,
// in order, with d_ino equal to st_ino.
func TestRootListing(t *testing.T) {
	requireFUSE(t)
	const items = 5000
	s := newStore(t)
	start := time.Now()
	bases := make([]string, items)
	var g errgroup.Group
	g.SetLimit(16)
	for i := range items {
		g.Go(func() error {
			data := fmt.Appendf(nil, "item %d\n", i)
			p, err := s.Import(context.Background(), bytes.NewReader(tinyNAR(t, data)), store.ImportOptions{Name: fmt.Sprintf("tiny-%04d", i)})
			bases[i] = filepath.Base(p)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("imported %d items in %v", items, time.Since(start))
	slices.Sort(bases)
	m := mountStore(t, s)

	// directory order, as getdents returns it
	start = time.Now()
	f, err := os.Open(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("listed %d entries in %v", len(ents), time.Since(start))
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
		if !e.Type().IsRegular() {
			t.Errorf("%s: type %v, want a regular file", e.Name(), e.Type())
		}
	}
	if !slices.Equal(names, bases) {
		t.Errorf("root lists %d names (sorted: %v), want the %d items in order", len(names), slices.IsSorted(names), len(bases))
	}
	if got := sortedNames(t, m.dir); len(got) != items {
		t.Errorf("os.ReadDir: %d entries, want %d", len(got), items)
	}

	start = time.Now()
	des := readDirents(t, m.dir) // 4 KiB at a time
	got := make([]string, len(des))
	for i, de := range des {
		got[i] = de.name
	}
	if !slices.Equal(got, bases) {
		t.Errorf("getdents (4 KiB buffers): %d entries (sorted: %v), want the %d items in order", len(got), slices.IsSorted(got), items)
	}
	for _, de := range des {
		if st := lstat(t, m.path(de.name)); st.Ino != de.ino {
			t.Errorf("%s: d_ino %d, st_ino %d", de.name, de.ino, st.Ino)
		}
	}
	t.Logf("getdents and lstat of every entry: %v", time.Since(start))
	if b, err := os.ReadFile(m.path(bases[items/2])); err != nil || !bytes.HasPrefix(b, []byte("item ")) {
		t.Errorf("reading an item: %q, %v", b, err)
	}

	// rewinddir after reading a listing of several pages
	t.Run("Rewind", func(t *testing.T) {
		fd, err := syscall.Open(m.dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		first, err := readDirentsFd(fd)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		again, err := readDirentsFd(fd)
		if err != nil {
			t.Fatalf("getdents after rewinddir: %v", err)
		}
		if !slices.Equal(again, first) {
			t.Errorf("after rewinddir: %d entries, want the same %d", len(again), len(first))
		}
	})

	// Listings while paths are being added: each is sorted, without
	// duplicates, and has at least every path valid when it started.
	t.Run("ConcurrentAdds", func(t *testing.T) {
		const lateItems = 100
		done := make(chan error, 1)
		go func() {
			var err error
			for i := 0; i < lateItems && err == nil; i++ {
				data := fmt.Appendf(nil, "late %d\n", i)
				_, err = s.Import(context.Background(), bytes.NewReader(tinyNAR(t, data)), store.ImportOptions{Name: fmt.Sprintf("late-%03d", i)})
			}
			done <- err
		}()
		lists := 0
		for adding := true; adding; lists++ {
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				adding = false
			default:
			}
			des := readDirents(t, m.dir)
			names := make([]string, len(des))
			for i, de := range des {
				names[i] = de.name
			}
			if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
				t.Fatalf("listing %d: not sorted or with duplicates (%d names)", lists, len(names))
			}
			for _, b := range bases {
				if _, ok := slices.BinarySearch(names, b); !ok {
					t.Fatalf("listing %d: %s missing", lists, b)
				}
			}
		}
		if n := len(readDirents(t, m.dir)); n != items+lateItems {
			t.Errorf("after the adds: %d entries, want %d", n, items+lateItems)
		}
		t.Logf("%d listings during %d adds", lists, lateItems)
	})
}
