package fs_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	sfs "github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/store"
)

// The prefetcher reads ahead the blobs of the files after two read in
// listing order (4, then a window that doubles), never for reads out of
// order or far apart; with NoPrefetch nothing. What is read ahead is only
// a hint: every file still reads as its source.
func TestPrefetch(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoPrefetch=%v", off), func(t *testing.T) {
			s := newStore(t)
			src := srcTree{t, t.TempDir()}
			content := func(i int) []byte { return randBytes(uint64(i+1), 5000+i) }
			for i := range 30 {
				src.file(fmt.Sprintf("lib/f%02d", i), content(i), 0o444)
			}
			src.file("lib/sub/x", content(100), 0o444) // not a regular file of lib
			p, err := s.Add(context.Background(), src.dir, store.AddOptions{})
			if err != nil {
				t.Fatal(err)
			}
			m := mountStoreOptions(t, s, t.TempDir(), sfs.Options{NoPrefetch: off})
			item := m.path(filepath.Base(p))
			want := int64(0)
			settle := func(what string) {
				t.Helper()
				ok := eventually(5*time.Second, func() bool { return m.root.Prefetched() == want })
				time.Sleep(50 * time.Millisecond) // nothing more comes
				if got := m.root.Prefetched(); !ok || got != want {
					t.Fatalf("%s: %d blobs read ahead, want %d", what, got, want)
				}
			}
			read := func(i int) {
				t.Helper()
				got, err := os.ReadFile(filepath.Join(item, "lib", fmt.Sprintf("f%02d", i)))
				if err != nil || !bytes.Equal(got, content(i)) {
					t.Fatalf("lib/f%02d: %d bytes, %v; want its %d source bytes", i, len(got), err, len(content(i)))
				}
			}

			if _, err := os.ReadDir(filepath.Join(item, "lib")); err != nil {
				t.Fatal(err)
			}
			settle("lib listed")
			for _, i := range []int{10, 3, 20, 2} {
				read(i)
			}
			settle("files read out of order")
			read(21)
			settle("one file far from the last")
			read(22) // the second in order: 4 more
			if !off {
				want = 4 // f23..f26
			}
			settle("two files read in order")
			read(23) // the window doubles to 8, up to the last file
			if !off {
				want = 7 // f27..f29
			}
			settle("three files read in order")
			for i := 24; i < 30; i++ {
				read(i)
			}
			settle("the rest read")
		})
	}
}
