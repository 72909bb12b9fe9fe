package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// textItem makes a text item in the Nix store at url whose references are
// exactly refs (builtins.toFile records its string's context; nix-oracles.md
// §4.1), and returns its path.
func (n *nixEnv) textItem(url, name, text string, refs ...string) string {
	n.t.Helper()
	var ctx strings.Builder
	for _, r := range refs {
		ctx.WriteString(strconv.Quote(r) + " = { path = true; }; ")
	}
	expr := "{ name, text }: builtins.toFile name (builtins.appendContext text { " + ctx.String() + "})"
	out := n.line("nix-instantiate", "--store", url, "--eval", "--read-write-mode",
		"--argstr", "name", name, "--argstr", "text", text, "-E", expr)
	p, err := strconv.Unquote(out)
	if err != nil {
		n.t.Fatalf("nix-instantiate printed %q: %v", out, err)
	}
	return p
}

// TestNixBundles exchanges `nix-store --export` bundles with the real Nix: a
// reference graph made in a Nix store (c -> b -> a, c -> a) is exported by
// Nix, imported by storefs (references kept), exported again by storefs
// (byte-identical to Nix's bundle) and imported back into a fresh Nix store.
func TestNixBundles(t *testing.T) {
	nix := requireNix(t)
	const sd = "/nix/store"
	url, real := nix.newNixStore(sd)
	srcA := generate(t, tempDir(t), []treeCase{{"bundle-a", 21, mixedTree}})[0]
	a := nix.add(url, srcA)
	b := nix.textItem(url, "b.txt", "b refers to "+a+"\n", a)
	c := nix.textItem(url, "c.txt", "c refers to "+b+" and "+a+"\n", b, a)
	if got := nix.query(url, "references", b); !sameSet(got, []string{a}) {
		t.Fatalf("setting up: Nix references of b = %v, want [%s]", got, a)
	}
	if got := nix.query(url, "references", c); !sameSet(got, []string{a, b}) {
		t.Fatalf("setting up: Nix references of c = %v, want [%s %s]", got, a, b)
	}
	bundle := nix.run(nil, "nix-store", "--store", url, "--export", c, b, a)
	bundleFile := filepath.Join(tempDir(t), "x.export")
	if err := os.WriteFile(bundleFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		refs, referrers []string
		hash            string
		size            int64
		dump            []byte
	}{}
	for _, p := range []string{a, b, c} {
		size, err := strconv.ParseInt(nix.query(url, "size", p)[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		e := want[p]
		e.refs, e.referrers = nix.query(url, "references", p), nix.query(url, "referrers", p)
		e.hash, e.size = nix.query(url, "hash", p)[0], size
		e.dump = nix.dump(filepath.Join(real, filepath.Base(p)))
		want[p] = e
	}

	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, sd)
			got := mustStorefs(t, state, "import", "--bundle", bundleFile).lines()
			if !slices.Equal(got, []string{a, b, c}) {
				t.Errorf("storefs import --bundle printed %q, want %q (the stream's order, dependencies first)", got, []string{a, b, c})
			}
			if ls := listStore(t, state); !sameSet(ls, []string{a, b, c}) {
				t.Errorf("storefs ls = %v, want [%s %s %s]", ls, a, b, c)
			}
			for i, in := range storefsInfo(t, state, a, b, c) {
				p := []string{a, b, c}[i]
				w := want[p]
				if !sameSet(in.References, w.refs) {
					t.Errorf("storefs info %s: references %v, Nix %v", p, in.References, w.refs)
				}
				if !sameSet(in.Referrers, w.referrers) {
					t.Errorf("storefs info %s: referrers %v, Nix %v", p, in.Referrers, w.referrers)
				}
				if in.NarHash != w.hash || in.NarSize != w.size {
					t.Errorf("storefs info %s: %s %d, Nix -q --hash/--size %s %d", p, in.NarHash, in.NarSize, w.hash, w.size)
				}
				if in.Deriver != "" {
					t.Errorf("storefs info %s: deriver %q, want none", p, in.Deriver)
				}
				if exp := mustStorefs(t, state, "export", p).stdout; !bytes.Equal(exp, w.dump) {
					t.Errorf("storefs export %s differs from nix-store --dump of Nix's copy: %s", p, firstDiff(exp, w.dump))
				}
			}
			if cl := mustStorefs(t, state, "closure", c).lines(); !slices.Equal(cl, []string{a, b, c}) {
				t.Errorf("storefs closure c = %v, want [a b c] = %v", cl, []string{a, b, c})
			}
			checkVerify(t, state)

			// storefs's bundle is Nix's, byte for byte (the only order with
			// dependencies first is a, b, c)
			out := mustStorefs(t, state, "export", "--bundle", b, c, a).stdout
			if !bytes.Equal(out, bundle) {
				t.Errorf("storefs export --bundle differs from nix-store --export: %s", firstDiff(out, bundle))
			}
			// and the real Nix imports it
			url2, _ := nix.newNixStore(sd)
			imported := splitLines(string(nix.run(out, "nix-store", "--store", url2, "--import")))
			if !sameSet(imported, []string{a, b, c}) {
				t.Errorf("nix-store --import of storefs's bundle printed %v", imported)
			}
			if got := nix.query(url2, "references", b); !sameSet(got, []string{a}) {
				t.Errorf("after nix-store --import: references of b = %v, want [%s]", got, a)
			}
			if got := nix.query(url2, "references", c); !sameSet(got, []string{a, b}) {
				t.Errorf("after nix-store --import: references of c = %v, want [%s %s]", got, a, b)
			}
			if _, stderr, err := nix.try(nil, "nix-store", "--store", url2, "--verify", "--check-contents"); err != nil || strings.Contains(stderr, "was modified") {
				t.Errorf("nix-store --verify --check-contents after importing storefs's bundle: %v\n%s", err, stderr)
			}
			checkTmpEmpty(t, state)
		})
	}
}

// TestNixBundleSingle: `storefs export --bundle P` of an item without
// references or deriver is byte-identical to `nix-store --export P`, in both
// modes and store dirs, for a tree, a bare file and a top-level symlink.
func TestNixBundleSingle(t *testing.T) {
	nix := requireNix(t)
	cases := []treeCase{treeCases[0], treeCases[3], treeCases[8], treeCases[10]}
	srcs := generate(t, tempDir(t), cases)
	for _, sd := range storeDirs {
		url, _ := nix.newNixStore(sd)
		nixExport := map[string][]byte{}
		var paths []string
		for _, src := range srcs {
			p := nix.add(url, src)
			paths = append(paths, p)
			nixExport[p] = nix.run(nil, "nix-store", "--store", url, "--export", p)
		}
		for _, mode := range modes {
			t.Run(mode+strings.ReplaceAll(sd, "/", "_"), func(t *testing.T) {
				state := initStore(t, mode, sd)
				for i, src := range srcs {
					if got := mustStorefs(t, state, "add", src).lines(); len(got) != 1 || got[0] != paths[i] {
						t.Fatalf("storefs add %s = %q, Nix %s", cases[i].name, got, paths[i])
					}
					got := mustStorefs(t, state, "export", "--bundle", paths[i]).stdout
					if want := nixExport[paths[i]]; !bytes.Equal(got, want) {
						t.Errorf("storefs export --bundle %s differs from nix-store --export: %s", cases[i].name, firstDiff(got, want))
					}
					// and it imports into a fresh storefs store under the same path
					f := filepath.Join(tempDir(t), "single.export")
					if err := os.WriteFile(f, got, 0o644); err != nil {
						t.Fatal(err)
					}
					st2 := initStore(t, mode, sd)
					if imp := mustStorefs(t, st2, "import", "--bundle", f).lines(); !slices.Equal(imp, []string{paths[i]}) {
						t.Errorf("storefs import --bundle of its own bundle printed %q, want %s", imp, paths[i])
					}
					checkVerify(t, st2)
				}
			})
		}
	}
}
