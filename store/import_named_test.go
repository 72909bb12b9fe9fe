package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/storefs/storefs/store"
)

// Import with a Path registers the NAR under that path (a substitute), with
// its references (itself included), deriver and content address, and refuses
// a NAR whose hash or size is not the one promised, leaving the store as it
// was.
func TestImportNamedPath(t *testing.T) {
	ctx := context.Background()
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/nix/store")
			src := t.TempDir()
			os.WriteFile(filepath.Join(src, "f"), []byte("dependency\n"), 0o644)
			dep := add(t, s, filepath.Join(src, "f"), store.AddOptions{})
			fx := fixture(t, filepath.Join(src, "fx"))
			n := dump(t, fx)
			info := func(p string) *store.Info {
				in, err := s.Info(p)
				if err != nil {
					t.Fatalf("Info(%s): %v", p, err)
				}
				return in
			}
			const named = "/nix/store/00000000000000000000000000000000-fx-1.0"
			const drv = "/nix/store/11111111111111111111111111111111-fx-1.0.drv"
			good := store.NixHash(sha256Sum(n))
			refused := []struct {
				name string
				o    store.ImportOptions
				want string
			}{
				{"hash", store.ImportOptions{Path: named, NarHash: "sha256:" + strings.Repeat("0", 52), NarSize: int64(len(n))}, "NAR hash mismatch"},
				{"size", store.ImportOptions{Path: named, NarHash: good, NarSize: int64(len(n)) + 1}, "NAR size mismatch"},
				{"other store dir", store.ImportOptions{Path: "/gnu/store/00000000000000000000000000000000-fx"}, "bad store path"},
				{"name", store.ImportOptions{Path: named, Name: "other"}, "differs"},
				{"ref not valid", store.ImportOptions{Path: named, Refs: []string{drv}}, "not valid"},
				{"deriver without path", store.ImportOptions{Name: "x", Deriver: drv}, "only recorded for a named path"},
			}
			for _, c := range refused {
				_, err := s.Import(ctx, bytes.NewReader(n), c.o)
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("Import(%s) = %v; want an error containing %q", c.name, err, c.want)
				}
			}
			if _, err := s.Info(named); !errors.Is(err, store.ErrNotValid) {
				t.Fatalf("after refusals Info(%s) = %v; want ErrNotValid", named, err)
			}
			if ents, _ := os.ReadDir(filepath.Join(s.StateDir(), "tmp")); len(ents) != 0 {
				t.Errorf("tmp/ after refusals: %d entries", len(ents))
			}
			p, err := s.Import(ctx, bytes.NewReader(n), store.ImportOptions{
				Path: named, Refs: []string{dep, named}, Deriver: drv, CA: "", NarHash: good, NarSize: int64(len(n)),
			})
			if err != nil || p != named {
				t.Fatalf("Import(named) = %q, %v; want %s", p, err, named)
			}
			in := info(named)
			want := []string{named, dep}
			slices.Sort(want)
			if !slices.Equal(in.References, want) || in.Deriver != drv || in.NarHash != good || in.CA != "" {
				t.Errorf("Info = %+v; want references %v, deriver %s, hash %s, no CA", in, want, drv, good)
			}
			if got := export(t, s, named); !bytes.Equal(got, n) {
				t.Errorf("Export(named) differs from the imported NAR")
			}
			if q, err := s.LookupHashPart("00000000000000000000000000000000"); err != nil || q != named {
				t.Errorf("LookupHashPart = %q, %v; want %s", q, err, named)
			}
			if _, err := s.LookupHashPart("22222222222222222222222222222222"); !errors.Is(err, store.ErrNotValid) {
				t.Errorf("LookupHashPart(missing) = %v; want ErrNotValid", err)
			}
		})
	}
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
