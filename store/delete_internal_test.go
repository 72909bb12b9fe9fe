package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// deleteTrees removes deep and wide read-only trees, single files and
// symlinks in parallel, counts only the bytes whose last link went, and
// leaves other links of a deleted file alone.
func TestDeleteTrees(t *testing.T) {
	base := t.TempDir()
	var want int64
	write := func(p string, size int) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, bytes.Repeat([]byte{'x'}, size), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	var paths []string
	for i := range 5 {
		item := filepath.Join(base, fmt.Sprintf("item%d", i))
		paths = append(paths, item)
		deep := item
		for d := range 6 {
			deep = filepath.Join(deep, fmt.Sprintf("d%d", d))
			write(filepath.Join(deep, "f"), 100+d)
			want += int64(100 + d)
		}
		for f := range 3*fileBatch + 7 { // a wide directory: several batches
			write(filepath.Join(item, "wide", fmt.Sprintf("f%03d", f)), 10)
			want += 10
		}
		if err := os.Symlink("wide/f000", filepath.Join(item, "link")); err != nil {
			t.Fatal(err)
		}
	}
	// a file also linked from outside: its bytes stay, as does the link
	write(filepath.Join(base, "item0", "shared"), 5000)
	outside := filepath.Join(base, "outside")
	if err := os.Link(filepath.Join(base, "item0", "shared"), outside); err != nil {
		t.Fatal(err)
	}
	// a single-file item and a symlink item
	write(filepath.Join(base, "single"), 777)
	want += 777
	if err := os.Symlink("/nowhere", filepath.Join(base, "symlink")); err != nil {
		t.Fatal(err)
	}
	paths = append(paths, filepath.Join(base, "single"), filepath.Join(base, "symlink"), filepath.Join(base, "missing"))
	// read-only directories, as in a store
	for _, p := range paths[:5] {
		filepath.Walk(p, func(q string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				defer os.Chmod(q, 0o555) // after its children were listed
			}
			return nil
		})
	}
	freed, err := deleteTrees(paths)
	if err != nil {
		t.Fatal(err)
	}
	if freed != want {
		t.Errorf("freed %d bytes; want %d", freed, want)
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", p, err)
		}
	}
	if fi, err := os.Stat(outside); err != nil || fi.Size() != 5000 {
		t.Errorf("the outside link of a deleted file: %v %v", fi, err)
	}
}
