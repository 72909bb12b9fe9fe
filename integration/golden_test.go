package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// goldenPath holds what the real Nix said about treeCases, so that the
// comparisons stay alive on machines without Nix. Regenerate it (it needs
// nix-store and nix-hash) after changing the generators or treeCases:
//
//	go test ./integration/ -run TestGolden -update
const goldenPath = "testdata/golden.json"

type goldenFile struct {
	Comment string        `json:"comment"`
	Nix     string        `json:"nix"` // nix-store --version that produced it
	Items   []goldenEntry `json:"items"`
}

type goldenEntry struct {
	Name      string            `json:"name"`
	NarHash   string            `json:"narHash"`   // sha256:$(nix-hash --type sha256 --base32 SRC)
	NarSHA256 string            `json:"narSha256"` // nix-hash --type sha256 SRC (hex) == sha256 of nix-store --dump SRC
	NarSize   int64             `json:"narSize"`   // length of nix-store --dump SRC
	Paths     map[string]string `json:"paths"`     // store dir -> nix-store --add SRC
}

// nixGolden asks the real Nix for the golden values of the generated sources.
func nixGolden(t *testing.T, nix *nixEnv, srcs []string) *goldenFile {
	gf := &goldenFile{
		Comment: "Expected store paths and NARs of the trees integration/gen_test.go generates, as the real Nix computes them. Regenerate: go test ./integration/ -run TestGolden -update",
		Nix:     nix.version(),
	}
	urls := map[string]string{}
	for _, sd := range storeDirs {
		urls[sd], _ = nix.newNixStore(sd)
	}
	for i, c := range treeCases {
		dump := nix.dump(srcs[i])
		e := goldenEntry{
			Name:      c.name,
			NarHash:   "sha256:" + nix.narHash32(srcs[i]),
			NarSHA256: nix.narHash16(srcs[i]),
			NarSize:   int64(len(dump)),
			Paths:     map[string]string{},
		}
		if sum := sha256.Sum256(dump); hex.EncodeToString(sum[:]) != e.NarSHA256 {
			t.Fatalf("%s: nix-hash %s but sha256(nix-store --dump) %x", c.name, e.NarSHA256, sum)
		}
		for _, sd := range storeDirs {
			e.Paths[sd] = nix.add(urls[sd], srcs[i])
		}
		gf.Items = append(gf.Items, e)
	}
	return gf
}

func readGolden(t *testing.T) *goldenFile {
	b, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (generate it with: go test ./integration/ -run TestGolden -update)", err)
	}
	var gf goldenFile
	if err := json.Unmarshal(b, &gf); err != nil {
		t.Fatalf("%s: %v", goldenPath, err)
	}
	return &gf
}

// TestGolden checks storefs against the committed Nix values (no Nix
// needed): in both modes and for both store dirs, `storefs path` and
// `storefs add` give the golden path, `storefs export` has the golden sha256
// and size, and `storefs info` the golden narHash and narSize. With Nix
// installed it also checks that the golden file still says what Nix says.
func TestGolden(t *testing.T) {
	srcs := generate(t, tempDir(t), treeCases)
	if *update {
		if _, err := exec.LookPath("nix-store"); err != nil {
			t.Fatalf("-update needs the real nix-store: %v", err)
		}
		gf := nixGolden(t, requireNix(t), srcs)
		b, err := json.MarshalIndent(gf, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d items, %s)", goldenPath, len(gf.Items), gf.Nix)
	}
	gf := readGolden(t)
	byName := map[string]goldenEntry{}
	for _, e := range gf.Items {
		byName[e.Name] = e
	}
	if len(gf.Items) != len(treeCases) {
		t.Errorf("%s has %d items, treeCases %d: run with -update", goldenPath, len(gf.Items), len(treeCases))
	}
	for _, c := range treeCases {
		if _, ok := byName[c.name]; !ok {
			t.Fatalf("%s has no item %q: run with -update", goldenPath, c.name)
		}
	}

	if _, err := exec.LookPath("nix-store"); err == nil && !*update {
		t.Run("golden-is-nix", func(t *testing.T) {
			fresh := nixGolden(t, requireNix(t), srcs)
			for _, e := range fresh.Items {
				g := byName[e.Name]
				if g.NarHash != e.NarHash || g.NarSHA256 != e.NarSHA256 || g.NarSize != e.NarSize {
					t.Errorf("%s: golden NAR %s %s %d, Nix now %s %s %d (generator changed? run -update)",
						e.Name, g.NarHash, g.NarSHA256, g.NarSize, e.NarHash, e.NarSHA256, e.NarSize)
				}
				for sd, p := range e.Paths {
					if g.Paths[sd] != p {
						t.Errorf("%s: golden path %s, Nix now %s", e.Name, g.Paths[sd], p)
					}
				}
			}
		})
	}

	for _, mode := range modes {
		for _, sd := range storeDirs {
			t.Run(mode+strings.ReplaceAll(sd, "/", "_"), func(t *testing.T) {
				state := initStore(t, mode, sd)
				var want []string
				for i, c := range treeCases {
					g := byName[c.name]
					want = append(want, g.Paths[sd])
					checkGolden(t, state, srcs[i], g, sd)
				}
				if got := listStore(t, state); !sameSet(got, want) {
					t.Errorf("storefs ls = %v, want %v", got, want)
				}
				checkVerify(t, state)
				checkTmpEmpty(t, state)
			})
		}
	}
}

func checkGolden(t *testing.T, state, src string, g goldenEntry, sd string) {
	t.Helper()
	want := g.Paths[sd]
	if want == "" {
		t.Fatalf("%s: no golden path for %s", g.Name, sd)
	}
	if got := string(bytes.TrimSpace(mustStorefs(t, state, "path", src).stdout)); got != want {
		t.Errorf("storefs path %s = %s, golden %s", g.Name, got, want)
	}
	if got := mustStorefs(t, state, "add", src).lines(); len(got) != 1 || got[0] != want {
		t.Errorf("storefs add %s = %q, golden %s", g.Name, got, want)
		return
	}
	exp := mustStorefs(t, state, "export", want).stdout
	if sum := sha256.Sum256(exp); hex.EncodeToString(sum[:]) != g.NarSHA256 || int64(len(exp)) != g.NarSize {
		t.Errorf("storefs export %s: sha256 %x, %d bytes; golden %s, %d bytes", g.Name, sum, len(exp), g.NarSHA256, g.NarSize)
	}
	in := storefsInfo(t, state, want)[0]
	if in.NarHash != g.NarHash || in.NarSize != g.NarSize {
		t.Errorf("storefs info %s: narHash %s narSize %d; golden %s %d", g.Name, in.NarHash, in.NarSize, g.NarHash, g.NarSize)
	}
}
