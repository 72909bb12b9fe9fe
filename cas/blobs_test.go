package cas_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
)

// A blob left under its name without its bytes (a power cut between its
// rename and the sync of its add, which then never registered anything) is
// not taken as present: the next batch with that content stages it again,
// and its Commit replaces the torn file. A present blob of the right size is
// taken as it is, and nothing is staged for it.
func TestBatchReplacesTornBlob(t *testing.T) {
	dir := t.TempDir()
	area := cas.NewBlobs(filepath.Join(dir, "blobs"))
	data := bytes.Repeat([]byte("storefs "), 1000)
	k, err := nar.HashFile(false, int64(len(data)), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	key := cas.Key(k)
	for _, torn := range [][]byte{nil, data[:100]} {
		p := area.Path(key)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		if err := os.WriteFile(p, torn, 0o444); err != nil {
			t.Fatal(err)
		}
		b, err := area.NewBatch(filepath.Join(dir, "stage"))
		if err != nil {
			t.Fatal(err)
		}
		if need, err := b.Need(key); err != nil || need {
			t.Errorf("Need without a size = %v, %v; want false (present)", need, err)
		}
		staged, err := b.PutBytes(key, false, data)
		if err != nil || !staged {
			t.Fatalf("PutBytes over a torn blob of %d bytes: staged %v, %v; want staged", len(torn), staged, err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("after Commit the blob holds %d bytes (%v), want %d", len(got), err, len(data))
		}
		if err := area.Verify(key); err != nil {
			t.Error(err)
		}
	}
	b, err := area.NewBatch(filepath.Join(dir, "stage"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Abort()
	if staged, err := b.PutBytes(key, false, data); err != nil || staged {
		t.Errorf("PutBytes of a present blob: staged %v, %v; want not staged", staged, err)
	}
}
