package store

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// The parallel walk lists a wide and deep tree's files in NAR order (as a
// serial bytewise walk does), and of several bad entries reports the first
// in NAR order whichever goroutine met it first.
func TestWalkSourceOrderAndFirstError(t *testing.T) {
	src := t.TempDir()
	for i := range 40 {
		dir := filepath.Join(src, fmt.Sprintf("d%02d", i), "sub", fmt.Sprintf("x%d", i%3))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"B", "a", "a.txt", "Z-" + fmt.Sprint(i)} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("a", filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	if err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			want = append(want, strings.TrimPrefix(p, src+"/"))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		_, files, err := walkSource(src)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]string, len(files))
		for i, f := range files {
			got[i] = f.rel
		}
		if !slices.Equal(got, want) {
			t.Fatalf("files out of NAR order:\n got %v\nwant %v", got[:10], want[:10])
		}
	}

	// FIFOs deep in a late directory and shallow in an early one: the
	// early one is reported, every time.
	for _, p := range []string{"d39/sub/x0/pipe", "d03/pipe", "d20/sub/pipe"} {
		if err := syscall.Mkfifo(filepath.Join(src, p), 0o644); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
	}
	for range 5 {
		_, _, err := walkSource(src)
		if err == nil || !strings.Contains(err.Error(), "d03/pipe: ") {
			t.Fatalf("walk error = %v; want the one for d03/pipe", err)
		}
	}
}
