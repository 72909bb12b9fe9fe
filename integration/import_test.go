package integration

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Hand-made NARs, built the way /work/shared/oracles/make-nar-cases builds
// them: every token is a u64le length, the bytes and zero padding to a
// multiple of 8.

func narStr(s string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

func narTokens(toks ...string) []byte {
	var b []byte
	for _, t := range toks {
		b = append(b, narStr(t)...)
	}
	return b
}

func narReg(data string, exec bool) []byte {
	b := narTokens("(", "type", "regular")
	if exec {
		b = append(b, narTokens("executable", "")...)
	}
	return append(b, narTokens("contents", data, ")")...)
}

func narSym(target string) []byte { return narTokens("(", "type", "symlink", "target", target, ")") }

type narEnt struct {
	name string
	node []byte
}

func narDir(ents ...narEnt) []byte {
	b := narTokens("(", "type", "directory")
	for _, e := range ents {
		b = append(b, narTokens("entry", "(", "name", e.name, "node")...)
		b = append(b, e.node...)
		b = append(b, narStr(")")...)
	}
	return append(b, narStr(")")...)
}

func narOf(node []byte) []byte { return append(narStr("nix-archive-1"), node...) }

func corrupt(b []byte, at int, v byte) []byte {
	b = slices.Clone(b)
	b[at] = v
	return b
}

type narCase struct {
	name string
	nar  []byte
}

// malformedNARs must all be refused: make-nar-cases' malformed cases (Nix
// 2.8 accepts some of them, newer Nix and storefs do not), plus refusals that
// come after a large file was already streamed into the store's staging.
func malformedNARs() []narCase {
	big := strings.Repeat("0123456789abcdef", (3<<20)/16) // 3 MiB: the streamed (not in-memory) path
	padContents := narOf(narReg("abc", false))
	padName := narOf(narDir(narEnt{"a", narReg("abc", false)}))
	truncatedBig := narOf(narDir(narEnt{"a", narReg(big, false)}))
	return []narCase{
		{"unsorted-entries", narOf(narDir(narEnt{"b", narReg("x", false)}, narEnt{"a", narReg("y", false)}))},
		{"unsorted-nested", narOf(narDir(narEnt{"x", narDir(narEnt{"b", narReg("1", false)}, narEnt{"a", narReg("2", false)})}))},
		{"duplicate-entry", narOf(narDir(narEnt{"a", narReg("x", false)}, narEnt{"a", narReg("y", false)}))},
		{"name-dot", narOf(narDir(narEnt{".", narReg("x", false)}))},
		{"name-dotdot", narOf(narDir(narEnt{"..", narReg("x", false)}))},
		{"name-slash", narOf(narDir(narEnt{"a/b", narReg("x", false)}))},
		{"name-empty", narOf(narDir(narEnt{"", narReg("x", false)}))},
		{"name-nul", narOf(narDir(narEnt{"a\x00b", narReg("x", false)}))},
		{"bad-magic", append(narStr("nix-archive-2"), narReg("x", false)...)},
		{"trailing-garbage", append(narOf(narReg("x", false)), "garbage!"...)},
		{"truncated", func() []byte { b := narOf(narReg("hello", false)); return b[:len(b)-8] }()},
		{"executable-marker-nonempty", narOf(narTokens("(", "type", "regular", "executable", "x", "contents", "", ")"))},
		{"executable-after-contents", narOf(narTokens("(", "type", "regular", "contents", "", "executable", "", ")"))},
		{"symlink-empty-target", narOf(narSym(""))},
		{"unknown-type", narOf(narTokens("(", "type", "fifo", ")"))},
		{"nonzero-padding-contents", corrupt(padContents, bytes.Index(padContents, []byte("abc"))+3, 1)},
		{"nonzero-padding-name", corrupt(padName, bytes.Index(padName, append(narStr("name"), narStr("a")...))+len(narStr("name"))+9, 7)},
		// extra: the refusal comes after large and small files were staged
		{"big-then-unsorted", narOf(narDir(
			narEnt{"a", narReg(big, true)},
			narEnt{"b", narReg("small file", false)},
			narEnt{"d", narReg("d", false)},
			narEnt{"c", narReg("c", false)}))},
		{"big-then-trailing-garbage", append(narOf(narDir(narEnt{"a", narReg(big, false)}, narEnt{"s", narSym("a")})), 1, 0, 0, 0, 0, 0, 0, 0)},
		{"big-truncated", truncatedBig[:len(truncatedBig)-(1<<20)]},
		{"empty-input", nil},
		{"magic-only", narStr("nix-archive-1")},
		{"nested-bad-name-after-files", narOf(narDir(
			narEnt{"a", narDir(narEnt{"f", narReg("f", false)})},
			narEnt{"b", narDir(narEnt{"g", narReg("g", true)}, narEnt{"x/y", narReg("bad", false)})}))},
	}
}

// validNARs must round-trip byte-exact.
func validNARs() []narCase {
	return []narCase{
		{"ok-dir", narOf(narDir(narEnt{"a", narReg("x", false)}, narEnt{"b", narReg("y", false)}))},
		{"ok-exec", narOf(narReg("#!/bin/sh\n", true))},
		{"ok-symlink", narOf(narSym("target"))},
		{"ok-empty-dir", narOf(narDir())},
		{"ok-empty-file", narOf(narReg("", false))},
		{"ok-case-only-names", narOf(narDir(narEnt{"A", narReg("x", false)}, narEnt{"a", narReg("y", false)}))},
		{"ok-sym-slash-target", narOf(narSym("/"))},
		{"ok-eight-bytes", narOf(narReg("12345678", false))},
		{"ok-nested", narOf(narDir(
			narEnt{"Zupper", narReg("upper\n", false)},
			narEnt{"_under", narReg("", true)},
			narEnt{"empty", narDir()},
			narEnt{"name with spaces ü é 日本.txt", narReg(strings.Repeat("x", 1000), false)},
			narEnt{"sub", narDir(
				narEnt{"dangling", narSym("/nonexistent/target")},
				narEnt{"deeper", narDir(narEnt{"f", narReg("deep\n", true)})},
				narEnt{"link", narSym("../Zupper")})}))},
		{"ok-big", narOf(narDir(
			narEnt{"a-exactly-1MiB", narReg(strings.Repeat("a", 1<<20), false)},
			narEnt{"b-over-1MiB", narReg(strings.Repeat("b", 1<<20+1), true)},
			narEnt{"c-3MiB", narReg(strings.Repeat("0123456789abcdef", (3<<20)/16)+"tail", false)},
			narEnt{"d-small", narReg("small", false)}))},
	}
}

// TestStrictImport: every malformed NAR is refused by `storefs import` with
// exit status 1 and an error naming the offset, leaving the store as it was
// (nothing valid, no blob or item files, nothing in tmp/); every valid one
// imports and exports back byte-exact. Both modes.
func TestStrictImport(t *testing.T) {
	dir := tempDir(t)
	write := func(c narCase) string {
		f := filepath.Join(dir, c.name+".nar")
		if err := os.WriteFile(f, c.nar, 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			area := "blobs"
			if mode == "disk" {
				area = "store"
			}
			for _, c := range malformedNARs() {
				t.Run(c.name, func(t *testing.T) {
					r := storefs(t, state, "import", "--name", "x", write(c))
					if r.code != 1 {
						t.Errorf("storefs import %s: exit %d, want 1 (stdout %q, stderr %q)", c.name, r.code, r.stdout, r.stderr)
					}
					if len(r.stdout) != 0 {
						t.Errorf("storefs import %s printed %q on stdout", c.name, r.stdout)
					}
					if !strings.Contains(r.stderr, "offset") {
						t.Errorf("storefs import %s: stderr does not name the offset: %q", c.name, r.stderr)
					}
					if ls := listStore(t, state); len(ls) != 0 {
						t.Errorf("after refusing %s: storefs ls = %v, want nothing", c.name, ls)
					}
					if files := filesUnder(t, filepath.Join(state, area)); len(files) != 0 {
						t.Errorf("after refusing %s: %s/ holds %v, want nothing", c.name, area, files)
					}
					checkTmpEmpty(t, state)
				})
			}
			var paths []string
			for _, c := range validNARs() {
				t.Run(c.name, func(t *testing.T) {
					f := write(c)
					out := mustStorefs(t, state, "import", "--name", "x", f).lines()
					if len(out) != 1 {
						t.Fatalf("storefs import %s printed %q", c.name, out)
					}
					paths = append(paths, out[0])
					if got := mustStorefs(t, state, "export", out[0]).stdout; !bytes.Equal(got, c.nar) {
						t.Errorf("storefs export after import of %s is not the input: %s", c.name, firstDiff(got, c.nar))
					}
					if in := storefsInfo(t, state, out[0])[0]; in.NarSize != int64(len(c.nar)) {
						t.Errorf("storefs info %s: narSize %d, want %d", c.name, in.NarSize, len(c.nar))
					}
					// the same NAR again changes nothing
					if again := mustStorefs(t, state, "import", "--name", "x", f).lines(); !slices.Equal(again, out) {
						t.Errorf("second import of %s printed %q, want %q", c.name, again, out)
					}
				})
			}
			if ls := listStore(t, state); !sameSet(ls, paths) || len(ls) != len(validNARs()) {
				t.Errorf("storefs ls = %v, want the %d imported paths %v", ls, len(validNARs()), paths)
			}
			checkVerify(t, state)
			checkTmpEmpty(t, state)
		})
	}
}

// TestNixImportPaths: a valid NAR imported by storefs gets the path Nix gives
// the tree it holds (nix-store --restore, then nix-store --add), and Nix's
// dump of that tree is the NAR itself.
func TestNixImportPaths(t *testing.T) {
	nix := requireNix(t)
	dir := tempDir(t)
	for _, sd := range storeDirs {
		url, _ := nix.newNixStore(sd)
		state := initStore(t, "blob", sd)
		for _, c := range validNARs() {
			f := filepath.Join(dir, c.name+".nar")
			if err := os.WriteFile(f, c.nar, 0o644); err != nil {
				t.Fatal(err)
			}
			tree := filepath.Join(dir, strings.ReplaceAll(sd, "/", "_"), c.name, "x")
			if err := os.MkdirAll(filepath.Dir(tree), 0o755); err != nil {
				t.Fatal(err)
			}
			nix.run(c.nar, "nix-store", "--restore", tree)
			if d := nix.dump(tree); !bytes.Equal(d, c.nar) {
				t.Errorf("%s: nix-store --dump of Nix's restore is not the NAR: %s", c.name, firstDiff(d, c.nar))
			}
			want := nix.add(url, tree)
			if got := mustStorefs(t, state, "import", "--name", "x", f).lines(); !slices.Equal(got, []string{want}) {
				t.Errorf("%s under %s: storefs import printed %q, Nix's --add of the restored tree %s", c.name, sd, got, want)
			}
		}
	}
}
