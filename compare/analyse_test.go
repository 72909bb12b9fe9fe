package compare

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/storefs/storefs/store"
)

// statListing is every entry below dir with its inode, mode, size, link
// count and its three times (so a changed access time shows too), sorted.
// It only stats.
func statListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	// The walk lists directories with O_NOATIME (the tests own the tree),
	// so that taking the listing does not itself move a directory's atime.
	var walk func(p string) error
	walk = func(p string) error {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s ino=%d mode=%o size=%d nlink=%d atime=%d.%09d mtime=%d.%09d ctime=%d.%09d", p,
			st.Ino, st.Mode, st.Size, st.Nlink, st.Atim.Sec, st.Atim.Nsec, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec))
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return nil
		}
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOATIME, 0)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := walk(filepath.Join(p, n)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(dir); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// contentListing is the sha256 of every regular file and the target of
// every symlink below dir.
func contentListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, fmt.Sprintf("%s %x", p, sha256.Sum256(b)))
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, p+" -> "+l)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Analyse only reads: a read-only store dir comes out with the same
// contents, modes, inodes and times, access times included (the files'
// and directories' atimes are set before their mtimes first, so that even
// a relatime mount would update them on a plain read).
func TestAnalyseReadOnly(t *testing.T) {
	storeDir := filepath.Join(t.TempDir(), "store")
	tr := makeTree(t, storeDir)
	write(t, filepath.Join(storeDir, ".links", "0000000000000000000000000000000000000000000000000000"), tr.mid, 0o444)
	contents := contentListing(t, storeDir)
	// Read-only modes as a store has them, then atimes older than the
	// mtimes (so that relatime would move them on any read), set after the
	// walk has listed every directory.
	var paths []string
	err := filepath.WalkDir(storeDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o444)
		if d.IsDir() || fi.Mode()&0o100 != 0 {
			mode = 0o555
		}
		paths = append(paths, p)
		return os.Chmod(p, mode)
	})
	if err != nil {
		t.Fatal(err)
	}
	old, recent := time.Unix(1_000_000, 0), time.Unix(2_000_000, 0)
	for _, p := range paths {
		if err := os.Chtimes(p, old, recent); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { removeTree(storeDir) })
	// the chmods changed ctimes: list after them
	before := statListing(t, storeDir)

	est, an, err := Analyse(context.Background(), storeDir, AnalyseOptions{Jobs: 3})
	if err != nil {
		t.Fatal(err)
	}
	if after := statListing(t, storeDir); !slices.Equal(before, after) {
		t.Errorf("the store dir changed:\nbefore %q\nafter  %q", before, after)
	}
	if got := contentListing(t, storeDir); !slices.Equal(contents, got) {
		t.Errorf("contents changed:\nbefore %q\nafter  %q", contents, got)
	}

	// .links is skipped; the items are the tree's.
	if an.Items != 2 || an.Files != 9 || an.Inodes != 9 {
		t.Errorf("analysis %+v; want 2 items, 9 files, 9 inodes (.links skipped)", an)
	}
	m := byStrategy(est)
	for s, stored := range map[Strategy]int64{None: 9, Links8192: 7, Links0: 6, Blob: 6, Chunk: 6} {
		if r := m[s]; !r.Estimated || r.FilesStored != stored || r.FilesDeduplicated != 9-stored || r.LogicalBytes != 2*5000+4*20000+2<<20+1 {
			t.Errorf("%s: %+v; want %d files stored of 9", s, r, stored)
		}
	}
	if r := m[None]; r.Ratio == nil || *r.Ratio != 1 || r.MetadataBytes != 0 {
		t.Errorf("none: ratio %v, metadata %d; want 1 and none", r.Ratio, r.MetadataBytes)
	}
}

// Hard links are one inode, read once, but every path is a file of its
// item: none stores each, links-0 and blob one.
func TestAnalyseHardLinks(t *testing.T) {
	storeDir := t.TempDir()
	data := pseudoRandom(7, 100<<10)
	write(t, filepath.Join(storeDir, "a-1", "f"), data, 0o444)
	if err := os.MkdirAll(filepath.Join(storeDir, "b-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(storeDir, "a-1", "f"), filepath.Join(storeDir, "b-1", "f")); err != nil {
		t.Fatal(err)
	}
	var hashed int
	est, an, err := Analyse(context.Background(), storeDir, AnalyseOptions{
		Strategies: []Strategy{None, Links0, Chunk},
		Progress: func(files int, bytes int64) *store.Progress {
			if files != 1 || bytes != int64(len(data)) {
				t.Errorf("progress announced %d files, %d bytes; want the one inode", files, bytes)
			}
			return &store.Progress{Files: func(n int) { hashed += n }}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if an.Files != 2 || an.Inodes != 1 || hashed != 1 {
		t.Errorf("analysis %+v, %d hashed; want 2 files, 1 inode hashed once", an, hashed)
	}
	m := byStrategy(est)
	if m[None].FilesStored != 2 || m[Links0].FilesStored != 1 || m[Chunk].FilesStored != 1 || m[Chunk].Chunks != int64(len(chunksOf(t, data))) {
		t.Errorf("stored none %d, links-0 %d, chunk %d (%d chunks); want 2, 1, 1 (%d)", m[None].FilesStored, m[Links0].FilesStored,
			m[Chunk].FilesStored, m[Chunk].Chunks, len(chunksOf(t, data)))
	}
	if m[None].DiskBytes-m[Links0].DiskBytes != roundup(int64(len(data)))-4096 {
		t.Errorf("links-0 saves %d bytes; want the copy less the .links directory", m[None].DiskBytes-m[Links0].DiskBytes)
	}
}
