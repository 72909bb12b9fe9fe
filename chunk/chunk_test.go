package chunk

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/storefs/storefs/cas"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func split(t *testing.T, data []byte) [][]byte {
	t.Helper()
	var out [][]byte
	if err := NewSplitter().Split(bytes.NewReader(data), func(c []byte) error {
		out = append(out, bytes.Clone(c))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSplitBoundsAndDeterminism(t *testing.T) {
	data := randomBytes(1, 4<<20)
	a := split(t, data)
	if got := bytes.Join(a, nil); !bytes.Equal(got, data) {
		t.Fatal("chunks do not concatenate to the input")
	}
	for i, c := range a {
		if len(c) > MaxSize || len(c) < MinSize && i != len(a)-1 {
			t.Errorf("chunk %d has %d bytes, outside [%d, %d]", i, len(c), MinSize, MaxSize)
		}
	}
	// 4 MiB at 64 KiB on average: some tens of chunks, not one per MinSize
	// nor one per MaxSize.
	if len(a) < (4<<20)/(3*AvgSize) || len(a) > (4<<20)/MinSize/2 {
		t.Errorf("%d chunks for 4 MiB: the average is not near %d bytes", len(a), AvgSize)
	}
	b := split(t, data)
	if len(a) != len(b) {
		t.Fatal("the same bytes split differently")
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("chunk %d differs between two splits of the same bytes", i)
		}
	}
}

// One inserted byte changes only the chunks around it: the rest of the file
// is shared. This is what chunk mode is for.
func TestOneInsertedByteSharesTheRest(t *testing.T) {
	data := randomBytes(2, 2<<20)
	mid := len(data) / 2
	edited := append(append(bytes.Clone(data[:mid]), 'x'), data[mid:]...)
	keys := map[cas.Key]bool{}
	for _, c := range split(t, data) {
		keys[KeyOf(c)] = true
	}
	var fresh, freshBytes int
	for _, c := range split(t, edited) {
		if !keys[KeyOf(c)] {
			fresh++
			freshBytes += len(c)
		}
	}
	if fresh == 0 || fresh > 2 || freshBytes > 2*MaxSize {
		t.Errorf("the edited copy has %d new chunks (%d bytes); want 1 or 2", fresh, freshBytes)
	}
}

func TestManifestCodec(t *testing.T) {
	refs := []Ref{{Key: KeyOf([]byte("a")), Size: 3}, {Key: KeyOf([]byte("b")), Size: MaxSize}}
	b := EncodeManifest(refs)
	if int64(len(b)) != ManifestSize(2) {
		t.Fatalf("manifest of 2 chunks has %d bytes, ManifestSize says %d", len(b), ManifestSize(2))
	}
	got, err := DecodeManifest(b, 3+MaxSize)
	if err != nil || len(got) != 2 || got[0] != refs[0] || got[1] != refs[1] {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	if _, err := DecodeManifest(b, -1); err != nil {
		t.Fatalf("unknown size: %v", err)
	}
	bad := map[string][]byte{
		"wrong size":  b,
		"truncated":   b[:len(b)-1],
		"bad magic":   append([]byte("xfchunk\x01"), b[8:]...),
		"empty":       nil,
		"zero chunk":  EncodeManifest([]Ref{{Size: 0}}),
		"huge chunk":  EncodeManifest([]Ref{{Size: MaxSize + 1}}),
		"new version": append([]byte("sfchunk\x02"), b[8:]...),
	}
	for name, m := range bad {
		size := int64(3 + MaxSize)
		if name == "wrong size" {
			size++
		}
		if name == "zero chunk" || name == "huge chunk" {
			size = -1
		}
		if _, err := DecodeManifest(m, size); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
}

// writeChunks stores data as chunks under dir and returns the File over
// them.
func writeChunks(t *testing.T, dir string, data []byte) (*File, []Ref) {
	t.Helper()
	a := NewAreas(filepath.Join(dir, "manifests"), filepath.Join(dir, "chunks"))
	var refs []Ref
	for _, c := range split(t, data) {
		k := KeyOf(c)
		p := a.Chunks.Path(k)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, c, 0o444); err != nil && !errors.Is(err, os.ErrPermission) {
			t.Fatal(err)
		}
		refs = append(refs, Ref{Key: k, Size: uint32(len(c))})
	}
	return NewFile(refs, a.Chunks.Path), refs
}

// Random-offset reads, concurrent ones too (more chunks touched than a File
// keeps open, so descriptors are evicted under readers), equal the source.
func TestFileReadAt(t *testing.T) {
	data := randomBytes(3, 3<<20+12345)
	f, refs := writeChunks(t, t.TempDir(), data)
	defer f.Close()
	if f.Size() != int64(len(data)) || len(refs) <= maxOpen {
		t.Fatalf("size %d, %d chunks", f.Size(), len(refs))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 300 {
				off := r.Int64N(int64(len(data)))
				n := 1 + r.IntN(3*MaxSize)
				buf := make([]byte, n)
				m, err := f.ReadAt(buf, off)
				want := data[off:min(int(off)+n, len(data))]
				if m != len(want) || !bytes.Equal(buf[:m], want) {
					t.Errorf("ReadAt(%d, %d): %d bytes, err %v; want %d equal bytes", n, off, m, err, len(want))
					return
				}
				if (err == io.EOF) != (m < n) {
					t.Errorf("ReadAt(%d, %d) at the end: err %v", n, off, err)
				}
			}
		})
	}
	wg.Wait()
	all, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(all, data) {
		t.Fatalf("sequential read: %d bytes, %v", len(all), err)
	}
}

func TestFileMissingOrShortChunk(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(4, 1<<20)
	f, refs := writeChunks(t, dir, data)
	defer f.Close()
	a := NewAreas(filepath.Join(dir, "manifests"), filepath.Join(dir, "chunks"))
	last := a.Chunks.Path(refs[len(refs)-1].Key)
	os.Chmod(last, 0o644)
	if err := os.Truncate(last, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 100), int64(len(data))-50); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short chunk: %v, want ErrUnexpectedEOF", err)
	}
	os.Remove(a.Chunks.Path(refs[0].Key))
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing chunk: %v, want ErrNotExist", err)
	}
}
