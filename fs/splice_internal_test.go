package fs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// An open blob's reads are spliced from its descriptor when go-fuse's pipe
// can hold them, and read into the request's buffer when not (the mount's
// 1 MiB READs are larger than the default pipe), with the same bytes.
func TestBlobFileReadFitsSplice(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20/16)
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := &blobFile{b: &blobFD{fd: int(f.Fd())}}
	for _, size := range []int{4096, spliceMax(), spliceMax() + 1, 1 << 20, 2 << 20} {
		dest := make([]byte, size)
		r, errno := b.Read(context.Background(), dest, 100)
		if errno != 0 {
			t.Fatalf("Read(%d): %v", size, errno)
		}
		_, seekable := r.(interface {
			Seekable() (uintptr, int64, int)
		})
		if want := size <= spliceMax(); seekable != want {
			t.Errorf("Read(%d): spliceable %v, want %v (pipe holds %d)", size, seekable, want, spliceMax())
		}
		got, st := r.Bytes(make([]byte, size))
		want := data[100:min(len(data), 100+size)]
		if !st.Ok() || !bytes.Equal(got, want) {
			t.Errorf("Read(%d) at 100: %d bytes, %v; want %d", size, len(got), st, len(want))
		}
		r.Done()
	}
}
