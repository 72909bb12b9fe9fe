package integration

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// nixItem is what the real Nix says about one generated source.
type nixItem struct {
	name   string
	src    string
	hash32 string            // nix-hash --type sha256 --base32 SRC
	dump   []byte            // nix-store --dump SRC
	paths  map[string]string // store dir -> path (print-fixed-path == --add)
}

// TestNixAddPathExport compares storefs with the real nix-store on every
// generated tree, in both modes and for /gnu/store and /nix/store:
//
//	storefs add == storefs path == nix-store --print-fixed-path --recursive sha256 == nix-store --add
//	storefs export == nix-store --dump
//	storefs info --json: narHash == sha256:$(nix-hash --type sha256 --base32), narSize == len(dump)
func TestNixAddPathExport(t *testing.T) {
	nix := requireNix(t)
	srcs := generate(t, tempDir(t), treeCases)

	items := make([]*nixItem, len(treeCases))
	for i, c := range treeCases {
		items[i] = &nixItem{name: c.name, src: srcs[i], hash32: nix.narHash32(srcs[i]), dump: nix.dump(srcs[i]), paths: map[string]string{}}
	}
	for _, sd := range storeDirs {
		url, real := nix.newNixStore(sd)
		for _, it := range items {
			fixed := nix.fixedPath(url, it.hash32, it.name)
			added := nix.add(url, it.src)
			if fixed != added {
				t.Errorf("%s under %s: nix-store --print-fixed-path gives %s, nix-store --add %s", it.name, sd, fixed, added)
			}
			it.paths[sd] = added
			// the copy Nix made dumps the same (a check of the oracle itself)
			if d := nix.dump(filepath.Join(real, filepath.Base(added))); !bytes.Equal(d, it.dump) {
				t.Errorf("%s: nix-store --dump of Nix's copy differs from the source's: %s", it.name, firstDiff(d, it.dump))
			}
		}
	}

	for _, mode := range modes {
		for _, sd := range storeDirs {
			t.Run(mode+strings.ReplaceAll(sd, "/", "_"), func(t *testing.T) {
				state := initStore(t, mode, sd)
				for _, it := range items {
					t.Run(it.name, func(t *testing.T) { checkAgainstNix(t, state, it, sd) })
				}
				checkVerify(t, state)
				checkTmpEmpty(t, state)
				want := make([]string, 0, len(items))
				for _, it := range items {
					want = append(want, it.paths[sd])
				}
				if got := listStore(t, state); !sameSet(got, want) {
					t.Errorf("storefs ls = %v, want %v", got, want)
				}
			})
		}
	}
}

func checkAgainstNix(t *testing.T, state string, it *nixItem, sd string) {
	want := it.paths[sd]
	if got := string(bytes.TrimSpace(mustStorefs(t, state, "path", it.src).stdout)); got != want {
		t.Errorf("storefs path %s = %s, nix-store --add gives %s", it.name, got, want)
	}
	if got := mustStorefs(t, state, "add", it.src).lines(); len(got) != 1 || got[0] != want {
		t.Fatalf("storefs add %s = %q, nix-store --add gives %s", it.name, got, want)
	}
	// adding again changes nothing and prints the same path
	if got := mustStorefs(t, state, "add", it.src).lines(); len(got) != 1 || got[0] != want {
		t.Errorf("second storefs add %s = %q, want %s", it.name, got, want)
	}
	if got := mustStorefs(t, state, "export", want).stdout; !bytes.Equal(got, it.dump) {
		t.Errorf("storefs export %s differs from nix-store --dump: %s", it.name, firstDiff(got, it.dump))
	}
	in := storefsInfo(t, state, want)[0]
	if in.Path != want {
		t.Errorf("storefs info path = %s, want %s", in.Path, want)
	}
	if in.NarHash != "sha256:"+it.hash32 {
		t.Errorf("storefs info narHash = %s, nix-hash gives sha256:%s", in.NarHash, it.hash32)
	}
	if in.NarSize != int64(len(it.dump)) {
		t.Errorf("storefs info narSize = %d, len(nix-store --dump) = %d", in.NarSize, len(it.dump))
	}
	if len(in.References) != 0 || len(in.Referrers) != 0 || in.Deriver != "" {
		t.Errorf("storefs info %s: references %v, referrers %v, deriver %q; want none", it.name, in.References, in.Referrers, in.Deriver)
	}
	if wantCA := "fixed:r:sha256:" + it.hash32; in.CA != wantCA {
		t.Errorf("storefs info ca = %q, want %q (what nix path-info shows for nix-store --add)", in.CA, wantCA)
	}
}
