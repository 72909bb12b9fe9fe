package store_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// After a power cut between an add's renames and its sync, a blob can be
// left under its name with none of its bytes; no valid item names it. The
// next add of that content must write it again, not take it as present and
// register an item that reads as an empty file.
func TestAddAfterTornBlob(t *testing.T) {
	for _, mode := range []store.Mode{store.ModeBlob, store.ModeChunk} {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/gnu/store")
			src := filepath.Join(t.TempDir(), "pkg")
			small := bytes.Repeat([]byte("small file\n"), 100)
			big := bytes.Repeat([]byte("a file of more than 8 MiB\n"), 400000)
			for name, data := range map[string][]byte{"small": small, "big": big} {
				if err := os.MkdirAll(src, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(src, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			area := cas.NewBlobs(filepath.Join(s.StateDir(), "blobs"))
			torn := []*[]byte{&small}
			if mode == store.ModeBlob {
				torn = append(torn, &big) // chunk mode keeps big files as chunks
			}
			for _, data := range torn {
				k, err := nar.HashFile(false, int64(len(*data)), bytes.NewReader(*data))
				if err != nil {
					t.Fatal(err)
				}
				p := area.Path(cas.Key(k))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o444); err != nil {
					t.Fatal(err)
				}
			}
			p := add(t, s, src, store.AddOptions{})
			if !bytes.Equal(export(t, s, p), dump(t, src)) {
				t.Errorf("%s does not export as its source", p)
			}
			// newStore's cleanup verifies every NAR hash
		})
	}
}
