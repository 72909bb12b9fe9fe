package fs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/storefs/storefs/cas"
)

// Open files of one blob share a descriptor; closed ones stay open up to
// the bound, least recently used first out; a collection closes them all.
func TestBlobFDs(t *testing.T) {
	blobs := cas.NewBlobs(t.TempDir())
	keys := make([]cas.Key, 4)
	for i := range keys {
		keys[i][0] = byte(i + 1)
		p := blobs.Path(keys[i])
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte{byte(i)}, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	c := newBlobFDs(blobs, 2)
	a, err := c.get(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.get(keys[0])
	if a != b || a.refs != 2 {
		t.Fatalf("two opens of one blob: descriptors %d and %d, refs %d; want one shared, 2 refs", a.fd, b.fd, a.refs)
	}
	c.put(a)
	if open, idle := c.held(); open != 1 || idle != 0 {
		t.Errorf("one of two opens closed: %d open, %d idle; want 1, 0", open, idle)
	}
	c.put(b)
	for _, k := range keys[1:] {
		f, err := c.get(k)
		if err != nil {
			t.Fatal(err)
		}
		c.put(f)
	}
	if open, idle := c.held(); open != 2 || idle != 2 {
		t.Errorf("4 blobs opened and closed with room for 2: %d open, %d idle; want 2, 2", open, idle)
	}
	if _, ok := c.m[keys[0]]; ok {
		t.Errorf("the least recently used blob's descriptor was kept")
	}
	kept, _ := c.get(keys[3]) // idle: taken back, not reopened
	if kept.refs != 1 || kept.elem != nil {
		t.Errorf("an idle descriptor taken back: refs %d, still listed idle %v", kept.refs, kept.elem != nil)
	}
	c.dropIdle()
	if open, idle := c.held(); open != 1 || idle != 0 {
		t.Errorf("after dropIdle: %d open, %d idle; want only the one in use", open, idle)
	}
	c.put(kept)
	if _, err := c.get(cas.Key{9}); err == nil {
		t.Error("a missing blob opened")
	}
}
