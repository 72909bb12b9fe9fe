package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storefs/storefs/store"
)

// A prepared import changes no path of the store until it is committed; its
// references need only be valid by then; a collection while it is prepared
// leaves it whole; Discard leaves nothing behind.
func TestPrepareImport(t *testing.T) {
	ctx := context.Background()
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/nix/store")
			src := t.TempDir()
			os.WriteFile(filepath.Join(src, "lib"), []byte("a library\n"), 0o644)
			libNAR := dump(t, filepath.Join(src, "lib"))
			appNAR := dump(t, fixture(t, filepath.Join(src, "app")))
			const lib = "/nix/store/00000000000000000000000000000000-lib"
			const app = "/nix/store/11111111111111111111111111111111-app"
			hash := func(n []byte) string { return store.NixHash(sha256Sum(n)) }

			// app refers to lib, which is not valid yet: app is prepared
			// first, lib second, as downloads may finish.
			pa, err := s.PrepareImport(ctx, bytes.NewReader(appNAR), store.ImportOptions{Path: app, Refs: []string{lib}, NarHash: hash(appNAR), NarSize: int64(len(appNAR))})
			if err != nil {
				t.Fatal(err)
			}
			defer pa.Discard()
			pl, err := s.PrepareImport(ctx, bytes.NewReader(libNAR), store.ImportOptions{Path: lib, NarHash: hash(libNAR), NarSize: int64(len(libNAR))})
			if err != nil {
				t.Fatal(err)
			}
			defer pl.Discard()
			if pa.Path() != app || pl.Path() != lib {
				t.Fatalf("Path() = %s, %s", pa.Path(), pl.Path())
			}
			for _, p := range []string{app, lib} {
				if _, err := s.Info(p); !errors.Is(err, store.ErrNotValid) {
					t.Fatalf("Info(%s) while prepared = %v; want ErrNotValid", p, err)
				}
			}
			// A collection now: nothing of the prepared items is named
			// yet, and it must take none of it.
			if _, err := s.CollectGarbage(ctx, store.GCOptions{}); err != nil {
				t.Fatal(err)
			}
			// Committed before its reference: refused, and nothing changed.
			if _, err := pa.Commit(ctx); err == nil || !errors.Is(err, store.ErrNotValid) {
				t.Fatalf("Commit(app) before lib = %v; want ErrNotValid", err)
			}
			if _, err := s.Info(app); !errors.Is(err, store.ErrNotValid) {
				t.Fatalf("Info(app) after a refused commit = %v", err)
			}
			if _, err := pa.Commit(ctx); err == nil || !strings.Contains(err.Error(), "committed or discarded") {
				t.Fatalf("second Commit = %v; want a refusal", err)
			}
			if p, err := pl.Commit(ctx); err != nil || p != lib {
				t.Fatalf("Commit(lib) = %q, %v", p, err)
			}
			if got := export(t, s, lib); !bytes.Equal(got, libNAR) {
				t.Error("Export(lib) differs from its NAR")
			}
			// app again, prepared and committed now that lib is valid
			pa2, err := s.PrepareImport(ctx, bytes.NewReader(appNAR), store.ImportOptions{Path: app, Refs: []string{lib}, NarHash: hash(appNAR), NarSize: int64(len(appNAR))})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pa2.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if got := export(t, s, app); !bytes.Equal(got, appNAR) {
				t.Error("Export(app) differs from its NAR")
			}
			// prepared and discarded: no trace in the store or its tmp
			pd, err := s.PrepareImport(ctx, bytes.NewReader(appNAR), store.ImportOptions{Name: "discarded"})
			if err != nil {
				t.Fatal(err)
			}
			pd.Discard()
			if _, err := s.Info(pd.Path()); !errors.Is(err, store.ErrNotValid) {
				t.Errorf("Info(discarded) = %v; want ErrNotValid", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(s.StateDir(), "tmp")); len(ents) != 0 {
				t.Errorf("tmp/ after commits and a discard: %d entries", len(ents))
			}
			rep, err := s.Verify(ctx, store.VerifyOptions{Contents: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Problems) != 0 || rep.Paths != 2 {
				t.Errorf("verify --contents: %+v; want 2 paths, no problems", rep)
			}
		})
	}
}
