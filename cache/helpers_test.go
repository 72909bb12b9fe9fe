package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

var modes = []store.Mode{store.ModeBlob, store.ModeChunk, store.ModeDisk}

const storeDir = "/nix/store"

// newStore makes a store in a temp dir; its cleanup fails the test unless
// the store verifies clean with contents and tmp/ is empty.
func newStore(t *testing.T, mode store.Mode) *store.Store {
	t.Helper()
	s, err := store.Init(filepath.Join(t.TempDir(), "state"), store.InitOptions{Mode: mode, StoreDir: storeDir}, store.Options{})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() {
		checkClean(t, s)
		s.Close()
	})
	return s
}

// checkClean fails the test unless s verifies with contents and has an
// empty tmp/.
func checkClean(t *testing.T, s *store.Store) {
	t.Helper()
	rep, err := s.Verify(context.Background(), store.VerifyOptions{Contents: true})
	if err != nil {
		t.Errorf("Verify: %v", err)
	} else {
		for _, p := range rep.Problems {
			t.Errorf("verify: %s", p)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(s.StateDir(), "tmp")); len(ents) != 0 {
		t.Errorf("tmp/ is not empty: %d entries", len(ents))
	}
}

func list(t *testing.T, s *store.Store) []string {
	t.Helper()
	var out []string
	if err := s.List(func(p string) bool { out = append(out, p); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32()) & 0x3f // compressible, like real files
	}
	return b
}

// closure fills s with a small input-addressed closure without content
// addresses (so only a signature can vouch for it): app -> lib -> dep,
// app -> dep, app -> app, with a deriver, and files of up to 300 KB (chunked
// in chunk mode). It returns the paths, references first.
func closure(t *testing.T, s *store.Store) (dep, lib, app string) {
	t.Helper()
	ctx := context.Background()
	src := t.TempDir()
	mk := func(rel string, data []byte, mode os.FileMode) {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("dep/share/data", randomBytes(1, 300<<10), 0o644)
	mk("dep/README", []byte("dep\n"), 0o644)
	mk("lib/lib/libx.so", randomBytes(2, 100<<10), 0o755)
	mk("app/bin/app", randomBytes(3, 70<<10), 0o755)
	os.Symlink("../lib", filepath.Join(src, "app/lib"))
	dep, err := s.Add(ctx, filepath.Join(src, "dep"), store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	named := func(hash, name, dir string, refs ...string) string {
		var b bytes.Buffer
		if err := nar.DumpPath(&b, filepath.Join(src, dir)); err != nil {
			t.Fatal(err)
		}
		p := storeDir + "/" + hash + "-" + name
		if slices.Contains(refs, "self") {
			refs[slices.Index(refs, "self")] = p
		}
		got, err := s.Import(ctx, &b, store.ImportOptions{Path: p, Refs: refs, Deriver: storeDir + "/" + hash[:31] + "x-" + name + ".drv"})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	lib = named("1ib00000000000000000000000000000", "lib", "lib", dep)
	app = named("app00000000000000000000000000000", "app", "app", lib, dep, "self")
	return dep, lib, app
}

func exportNAR(t *testing.T, s *store.Store, p string) [32]byte {
	t.Helper()
	h := sha256.New()
	if err := s.Export(context.Background(), h, p); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// sameItems fails unless b holds paths with a's NAR, references and deriver.
func sameItems(t *testing.T, a, b *store.Store, paths ...string) {
	t.Helper()
	for _, p := range paths {
		ia, err := a.Info(p)
		if err != nil {
			t.Fatal(err)
		}
		ib, err := b.Info(p)
		if err != nil {
			t.Errorf("%s not substituted: %v", p, err)
			continue
		}
		if ia.NarHash != ib.NarHash || ia.NarSize != ib.NarSize || !slices.Equal(ia.References, ib.References) || ia.Deriver != ib.Deriver || ia.CA != ib.CA {
			t.Errorf("%s: substituted %+v; want %+v", p, ib, ia)
		}
		if exportNAR(t, b, p) != exportNAR(t, a, p) {
			t.Errorf("%s: exported NARs differ", p)
		}
	}
}
