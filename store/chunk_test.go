package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/store"
)

func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// versions writes two "releases" of a package: the second has its library
// rebuilt with one byte inserted in the middle, the same docs, and a file of
// its own over the in-memory limit of add (8 MiB).
func versions(t *testing.T, dir string) (v1, v2 string, lib []byte) {
	t.Helper()
	lib = pseudoRandom(7, 3<<20+123)
	lib2 := slices.Concat(lib[:len(lib)/2], []byte{0xAB}, lib[len(lib)/2:])
	v1, v2 = filepath.Join(dir, "pkg-1.0"), filepath.Join(dir, "pkg-1.1")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{v1 + "/lib/libfoo.so", lib, 0o755},
		{v1 + "/share/doc/README", []byte("docs\n"), 0o644},
		{v2 + "/lib/libfoo.so", lib2, 0o755},
		{v2 + "/share/doc/README", []byte("docs\n"), 0o644},
		{v2 + "/share/data.bin", pseudoRandom(8, 9<<20+1), 0o644},
	} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	return v1, v2, lib
}

// areaFiles lists the keys in one content area and the bytes they hold.
func areaFiles(t *testing.T, a *cas.Blobs) (map[cas.Key]bool, int64) {
	t.Helper()
	keys := map[cas.Key]bool{}
	var bytes int64
	if err := a.Walk(func(k cas.Key, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Stat(a.Path(k))
		if err != nil {
			return err
		}
		keys[k] = true
		bytes += st.Size()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys, bytes
}

func manifestChunks(t *testing.T, s *store.Store, src string) map[cas.Key]bool {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(src)
	k := fileKey(t, st.Mode()&0o100 != 0, data)
	refs, err := s.Chunks().ReadManifest(k, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[cas.Key]bool{}
	for _, r := range refs {
		out[r.Key] = true
	}
	return out
}

func fileKey(t *testing.T, exec bool, data []byte) cas.Key {
	t.Helper()
	var nar bytes.Buffer
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	mode := os.FileMode(0o644)
	if exec {
		mode = 0o755
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	nar.Write(dump(t, p))
	return cas.Key(sha256.Sum256(nar.Bytes()))
}

// Two versions of a package that differ by one inserted byte in a 3 MiB
// library share all of its chunks but one or two: the chunk area holds the
// library about once, where blob mode holds it twice. Exports equal the
// NAR of the sources (what nix-store --dump gives, see the integration
// tests).
func TestChunkModeSharesEditedFiles(t *testing.T) {
	dir := t.TempDir()
	v1, v2, lib := versions(t, dir)
	cs := newStore(t, store.ModeChunk, "/gnu/store")
	bs := newStore(t, store.ModeBlob, "/gnu/store")
	for _, s := range []*store.Store{cs, bs} {
		for _, src := range []string{v1, v2} {
			p := add(t, s, src, store.AddOptions{})
			if got, want := export(t, s, p), dump(t, src); !bytes.Equal(got, want) {
				t.Fatalf("%s store: export of %s differs from the NAR of its source", s.Mode(), p)
			}
		}
	}
	_, blobBytes := areaFiles(t, bs.Blobs())
	chunks, chunkBytes := areaFiles(t, cs.Chunks().Chunks)
	manifests, manifestBytes := areaFiles(t, cs.Chunks().Manifests)
	wholes, wholeBytes := areaFiles(t, cs.Blobs())
	const data = 9<<20 + 1
	// the two libraries and data.bin are chunked; README stays whole
	if len(manifests) != 3 || len(wholes) != 1 || wholeBytes != 5 {
		t.Errorf("chunk store: %d manifests, %d whole blobs (%d bytes); want 3 and 1 (5 bytes)", len(manifests), len(wholes), wholeBytes)
	}
	if lo, hi := int64(len(lib)+data), int64(len(lib)+data+2*chunk.MaxSize); chunkBytes < lo || chunkBytes > hi {
		t.Errorf("chunk area holds %d bytes in %d chunks; want the library once plus at most two chunks: %d to %d", chunkBytes, len(chunks), lo, hi)
	}
	if want := int64(2*len(lib)+1) + data + 5; blobBytes != want {
		t.Errorf("blob area holds %d bytes, want %d (both libraries whole)", blobBytes, want)
	}
	// 36 bytes per chunk of a file, against 64 KiB of data on average
	if manifestBytes*500 > chunkBytes {
		t.Errorf("manifests take %d bytes for %d bytes of chunks", manifestBytes, chunkBytes)
	}
	t.Logf("blob mode %d bytes; chunk mode %d bytes of chunks in %d chunks, %d of manifests", blobBytes, chunkBytes, len(chunks), manifestBytes)
}

// A collection frees exactly the chunks no live file uses any more: those
// of the old library that the new one does not share, and its manifest.
func TestChunkModeGCFreesUnusedChunks(t *testing.T) {
	dir := t.TempDir()
	v1, v2, _ := versions(t, dir)
	s := newStore(t, store.ModeChunk, "/gnu/store")
	ctx := context.Background()
	p1 := add(t, s, v1, store.AddOptions{})
	p2 := add(t, s, v2, store.AddOptions{Root: "current"})
	old := manifestChunks(t, s, v1+"/lib/libfoo.so")
	live := manifestChunks(t, s, v2+"/lib/libfoo.so")
	for k := range manifestChunks(t, s, v2+"/share/data.bin") {
		live[k] = true
	}
	var unused []cas.Key
	for k := range old {
		if !live[k] {
			unused = append(unused, k)
		}
	}
	if len(unused) == 0 || len(unused) > 2 {
		t.Fatalf("%d chunks of the old library are unused by the new one; want 1 or 2", len(unused))
	}
	s = reopen(t, s) // drops this process's temp roots: only the root keeps v2
	res, err := s.CollectGarbage(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Deleted, []string{p1}) {
		t.Errorf("deleted %v, want [%s]", res.Deleted, p1)
	}
	if res.ManifestsRemoved != 1 || res.ChunksRemoved != len(unused) || res.BlobsRemoved != 0 {
		t.Errorf("gc removed %d manifests, %d chunks, %d blobs; want 1, %d, 0 (README is shared)", res.ManifestsRemoved, res.ChunksRemoved, res.BlobsRemoved, len(unused))
	}
	left, _ := areaFiles(t, s.Chunks().Chunks)
	if len(left) != len(live) {
		t.Errorf("%d chunks left, want the %d the live files use", len(left), len(live))
	}
	for k := range live {
		if !left[k] {
			t.Errorf("live chunk %s was removed", k)
		}
	}
	if got, want := export(t, s, p2), dump(t, v2); !bytes.Equal(got, want) {
		t.Error("the live item no longer exports as its source")
	}
	// Collecting the rest leaves every area empty.
	if err := s.RemoveRoot("current"); err != nil {
		t.Fatal(err)
	}
	res, err = s.CollectGarbage(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]*cas.Blobs{"chunks": s.Chunks().Chunks, "manifests": s.Chunks().Manifests, "blobs": s.Blobs()} {
		if k, _ := areaFiles(t, a); len(k) != 0 {
			t.Errorf("%s: %d files left after collecting everything", name, len(k))
		}
	}
}

// verify notices a chunk whose bytes changed, a missing chunk and a missing
// manifest, naming the item.
func TestChunkModeVerify(t *testing.T) {
	dir := t.TempDir()
	_, v2, _ := versions(t, dir)
	ctx := context.Background()
	for _, damage := range []string{"flip", "remove-chunk", "remove-manifest"} {
		t.Run(damage, func(t *testing.T) {
			st, err := store.Init(filepath.Join(t.TempDir(), "state"), store.InitOptions{Mode: store.ModeChunk}, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			p := add(t, st, v2, store.AddOptions{})
			refs := manifestChunks(t, st, v2+"/lib/libfoo.so")
			var k cas.Key
			for k = range refs {
				break
			}
			cp := st.Chunks().Chunks.Path(k)
			switch damage {
			case "flip":
				b, _ := os.ReadFile(cp)
				b[len(b)/2] ^= 1
				os.Chmod(cp, 0o644)
				if err := os.WriteFile(cp, b, 0o644); err != nil {
					t.Fatal(err)
				}
			case "remove-chunk":
				os.Remove(cp)
			case "remove-manifest":
				data, _ := os.ReadFile(v2 + "/lib/libfoo.so")
				os.Remove(st.Chunks().Manifests.Path(fileKey(t, true, data)))
			}
			rep, err := st.Verify(ctx, store.VerifyOptions{Contents: true})
			if err != nil {
				t.Fatal(err)
			}
			named := false
			for _, pr := range rep.Problems {
				named = named || strings.Contains(pr, p)
			}
			if len(rep.Problems) == 0 || !named {
				t.Errorf("verify after %s: %q; want a problem naming %s", damage, rep.Problems, p)
			}
			if damage != "flip" {
				quick, err := st.Verify(ctx, store.VerifyOptions{})
				if err != nil || len(quick.Problems) == 0 {
					t.Errorf("verify without --contents after %s: %v %v; want a problem", damage, quick, err)
				}
			}
		})
	}
}

// Importing a NAR with files above and below the in-memory limit gives the
// same item, byte for byte, as adding the tree.
func TestChunkModeImport(t *testing.T) {
	dir := t.TempDir()
	_, v2, _ := versions(t, dir)
	s := newStore(t, store.ModeChunk, "/gnu/store")
	want := add(t, s, v2, store.AddOptions{})
	other := newStore(t, store.ModeChunk, "/gnu/store")
	got, err := other.Import(context.Background(), bytes.NewReader(dump(t, v2)), store.ImportOptions{Name: "pkg-1.1"})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("import gave %s, add %s", got, want)
	}
	if !bytes.Equal(export(t, other, got), dump(t, v2)) {
		t.Error("imported item does not export as the NAR imported")
	}
	a, _ := areaFiles(t, s.Chunks().Chunks)
	b, _ := areaFiles(t, other.Chunks().Chunks)
	if len(a) != len(b) {
		t.Errorf("add stored %d chunks, import %d", len(a), len(b))
	}
}
