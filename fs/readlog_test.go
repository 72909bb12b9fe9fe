package fs_test

import (
	"bytes"
	"context"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/store"
)

// Reading a large file, on every read path, returns its bytes and makes
// go-fuse log nothing: its READs are 1 MiB, more than a default pipe holds,
// and a read result offered to splice at that size fails and logs (once per
// READ, which was 6144 lines on stderr for 6 GiB read).
func TestLargeReadsLogNothing(t *testing.T) {
	s := newStore(t)
	src := srcTree{t, filepath.Join(t.TempDir(), "large")}
	data := randBytes(7, 5<<20+123)
	src.file("big", data, 0o644)
	src.file("small", data[:3000], 0o644)
	p, err := s.Add(context.Background(), src.dir, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	log.SetOutput(&logged) // go-fuse's logger is log.Default
	defer log.SetOutput(os.Stderr)
	for _, rp := range readPaths() {
		t.Run(string(rp), func(t *testing.T) {
			m := mountStoreWith(t, s, t.TempDir(), rp)
			for _, name := range []string{"big", "small"} {
				f := m.path(filepath.Base(p), name)
				got, err := os.ReadFile(f)
				want := data
				if name == "small" {
					want = data[:3000]
				}
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("read %s: %d bytes, %v; want %d", name, len(got), err, len(want))
				}
				// Once more from storefs, not the kernel's cache of the file.
				fd, err := unix.Open(f, unix.O_RDONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
				unix.Close(fd)
				if got, err := os.ReadFile(f); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("re-read %s: %d bytes, %v", name, len(got), err)
				}
			}
			if m.unmount() != nil {
				t.Fatal("unmount failed")
			}
			if strings.Contains(logged.String(), "splice") {
				t.Errorf("go-fuse logged while reading:\n%.500s", logged.String())
			}
			logged.Reset()
		})
	}
}
