package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/storefs/storefs/store"
)

// Garbage collection, end to end:
//
//   - TestGCMatchesNix builds the same reference graphs, with the same direct
//     and indirect roots, in storefs (both modes) and in a throw-away Nix
//     store, and compares `gc --print-roots/--print-live/--print-dead`,
//     `delete` and `gc` step by step with nix-store's;
//   - TestGCRace adds (rooted and unrooted) from four processes while a fifth
//     collects in a loop;
//   - TestGCScenarios covers the GC cases of store-semantics §8 (15, 17,
//     20, 21, 22, 24) and `verify --repair`;
//   - TestGCWithMount collects a mounted store through its daemon.sock.

// gcName is the name part of a store path or base name (what follows the
// hash): the two systems give different hashes to the same graph, so paths
// are compared by name.
func gcName(p string) string {
	base := filepath.Base(p)
	if _, name, ok := strings.Cut(base, "-"); ok {
		return name
	}
	return base
}

// gcNames maps paths to their names, sorted.
func gcNames(paths []string) []string {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		out = append(out, gcName(p))
	}
	sort.Strings(out)
	return out
}

// gcItem is one item of a reference graph: its name and its references
// (names of earlier items).
type gcItem struct {
	name string
	refs []string
}

// gcStep is one step of a GC scenario run against Nix and storefs alike.
//
//	root NAME ITEM     direct root <state>/gcroots/NAME -> ITEM
//	unroot NAME        remove the direct root NAME (storefs root remove NAME)
//	iroot LINK ITEM    indirect root: symlink <links>/LINK -> ITEM, registered
//	                   under gcroots/auto (storefs root add --indirect,
//	                   nix-store --add-root)
//	rmlink LINK        remove the symlink <links>/LINK: the root goes stale
//	iremove LINK       unregister an indirect root (storefs root remove LINK;
//	                   Nix: remove its gcroots/auto entry)
//	rawroot NAME ITEM  symlink <state>/gcroots/NAME (NAME may have
//	                   directories) -> ITEM, made by hand
//	subroot NAME ITEM  symlink <state>/gcroots/NAME -> ITEM/f, a path below
//	                   the item (roots the item)
//	fileroot ITEM      a regular file <state>/gcroots/<ITEM's base name>
//	ghost NAME         symlink <state>/gcroots/NAME -> a store path that is
//	                   not valid (Nix: "skipping invalid root")
//	junk NAME          an invalid entry <hash>-NAME in the real store dir
//	                   (Nix and disk mode only): dead, deleted by gc
//	print              compare --print-roots, --print-live, --print-dead
//	delete ITEM        storefs delete / nix-store --delete
//	gc                 storefs gc / nix-store --gc
type gcStep struct {
	op, name, item string
}

// gcView is what a collector says about a store, by name.
type gcView struct {
	roots []string // "gcroots/NAME -> ITEM" or "links/LINK -> ITEM"
	live  []string
	dead  []string
	auto  int // entries in gcroots/auto
}

func (v gcView) String() string {
	return fmt.Sprintf("roots=%q live=%q dead=%q auto=%d", v.roots, v.live, v.dead, v.auto)
}

func gcSameView(a, b gcView) bool {
	return slices.Equal(a.roots, b.roots) && slices.Equal(a.live, b.live) && slices.Equal(a.dead, b.dead) && a.auto == b.auto
}

// gcCountDir counts the entries of a directory (0 when it does not exist).
func gcCountDir(t testing.TB, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return len(ents)
}

// gcRootLines normalises "LINK -> PATH" lines: LINK relative to the dirs
// given (prefix -> replacement), PATH by name; other roots (runtime roots
// Nix finds in /proc, profiles) are dropped.
func gcRootLines(lines []string, prefixes map[string]string) []string {
	var out []string
	for _, l := range lines {
		link, target, ok := strings.Cut(l, " -> ")
		if !ok {
			continue
		}
		for pre, repl := range prefixes {
			if rest, ok := strings.CutPrefix(link, pre+"/"); ok {
				dir, base := filepath.Split(rest)
				if len(base) > 33 && base[32] == '-' { // a regular file named as the path it roots
					base = "<hash>-" + base[33:]
				}
				out = append(out, repl+"/"+dir+base+" -> "+gcName(target))
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// ---- the Nix side ----

// gcNix is a throw-away Nix store a scenario runs in.
type gcNix struct {
	t     testing.TB
	n     *nixEnv
	root  string // real=root/store, state=root/state
	url   string
	links string // where indirect roots' symlinks live
	path  map[string]string
}

func newGCNix(t testing.TB, n *nixEnv, sd string) *gcNix {
	root := tempDir(t)
	g := &gcNix{t: t, n: n, root: root, url: storeURL(root, sd), links: filepath.Join(root, "links"), path: map[string]string{}}
	for _, d := range []string{g.links, filepath.Join(root, "state", "gcroots")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// build makes the items as text items (builtins.toFile), all in one
// evaluation: an item's text holds "NAME\n" and its references' paths,
// interpolated, so their string context makes them its references.
func (g *gcNix) build(items []gcItem) {
	g.t.Helper()
	var b strings.Builder
	b.WriteString("let\n")
	ids := map[string]string{}
	for i, it := range items {
		id := fmt.Sprintf("v%d", i)
		ids[it.name] = id
		text := it.name + `\n`
		for _, r := range it.refs {
			text += "${" + ids[r] + `}\n`
		}
		fmt.Fprintf(&b, "  %s = builtins.toFile %q \"%s\";\n", id, it.name, text)
	}
	b.WriteString("in {")
	for _, it := range items {
		fmt.Fprintf(&b, " %q = %s;", it.name, ids[it.name])
	}
	b.WriteString(" }")
	out := g.n.run(nil, "nix-instantiate", "--store", g.url, "--eval", "--read-write-mode", "--strict", "--json", "-E", b.String())
	var m map[string]string
	if err := json.Unmarshal(out, &m); err != nil {
		g.t.Fatalf("nix-instantiate: %v in %q", err, out)
	}
	for _, it := range items {
		g.path[it.name] = m[it.name]
		got := splitLines(string(g.n.run(nil, "nix-store", "--store", g.url, "-q", "--references", m[it.name])))
		want := slices.Clone(it.refs)
		sort.Strings(want)
		if gn := gcNames(got); !slices.Equal(gn, want) {
			g.t.Fatalf("Nix item %s has references %v, want %v", it.name, gn, want)
		}
	}
}

func (g *gcNix) gcArgs(args ...string) []string {
	return append([]string{"--store", g.url}, args...)
}

func (g *gcNix) lines(args ...string) []string {
	g.t.Helper()
	return splitLines(string(g.n.run(nil, "nix-store", g.gcArgs(args...)...)))
}

func (g *gcNix) autoDir() string { return filepath.Join(g.root, "state", "gcroots", "auto") }

func (g *gcNix) view() gcView {
	g.t.Helper()
	return gcView{
		roots: gcRootLines(g.lines("--gc", "--print-roots"), map[string]string{
			filepath.Join(g.root, "state", "gcroots"): "gcroots",
			g.links: "links",
		}),
		live: gcNames(g.lines("--gc", "--print-live")),
		dead: gcNames(g.lines("--gc", "--print-dead")),
		auto: gcCountDir(g.t, g.autoDir()),
	}
}

// valid lists the valid paths' names (nix path-info --all).
func (g *gcNix) valid() []string {
	g.t.Helper()
	return gcNames(splitLines(string(g.n.run(nil, "nix", "path-info", "--store", g.url, "--all"))))
}

// delete runs nix-store --delete and reports whether Nix refused.
func (g *gcNix) delete(items ...string) (refused bool, stderr string) {
	g.t.Helper()
	args := []string{"--delete"}
	for _, it := range items {
		args = append(args, g.path[it])
	}
	_, stderr, err := g.n.try(nil, "nix-store", g.gcArgs(args...)...)
	if err != nil && !strings.Contains(stderr, "still alive") {
		g.t.Fatalf("nix-store --delete %v: %v\n%s", items, err, stderr)
	}
	return err != nil, stderr
}

// referrersClosure is nix-store -q --referrers-closure, by name.
func (g *gcNix) referrersClosure(item string) []string {
	g.t.Helper()
	return gcNames(g.lines("-q", "--referrers-closure", g.path[item]))
}

func (g *gcNix) do(s gcStep) {
	g.t.Helper()
	switch s.op {
	case "root":
		link := filepath.Join(g.root, "state", "gcroots", s.name)
		os.Remove(link)
		if err := os.Symlink(g.path[s.item], link); err != nil {
			g.t.Fatal(err)
		}
	case "unroot":
		if err := os.Remove(filepath.Join(g.root, "state", "gcroots", s.name)); err != nil {
			g.t.Fatal(err)
		}
	case "iroot":
		link := filepath.Join(g.links, s.name)
		os.Remove(link)
		g.n.run(nil, "nix-store", g.gcArgs("--add-root", link, "-r", g.path[s.item])...)
	case "rmlink":
		if err := os.Remove(filepath.Join(g.links, s.name)); err != nil {
			g.t.Fatal(err)
		}
	case "iremove":
		link := filepath.Join(g.links, s.name)
		ents, _ := os.ReadDir(g.autoDir())
		found := false
		for _, e := range ents {
			p := filepath.Join(g.autoDir(), e.Name())
			if t, err := os.Readlink(p); err == nil && t == link {
				found = os.Remove(p) == nil
			}
		}
		if !found {
			g.t.Fatalf("Nix: no gcroots/auto entry for %s", link)
		}
	case "rawroot", "subroot", "fileroot", "ghost":
		gcHandRoot(g.t, filepath.Join(g.root, "state", "gcroots"), s, g.path)
	case "junk":
		gcMakeEntry(g.t, g.root, gcFakeBase(s.name))
	case "gc":
		g.n.run(nil, "nix-store", g.gcArgs("--gc")...)
	default:
		g.t.Fatalf("gcNix.do: bad step %v", s)
	}
}

// ---- the storefs side ----

// gcSide is one storefs store a scenario runs in.
type gcSide struct {
	t     testing.TB
	mode  string
	state string
	links string
	path  map[string]string
}

func newGCSide(t testing.TB, mode, sd string) *gcSide {
	dir := tempDir(t)
	s := &gcSide{t: t, mode: mode, links: filepath.Join(dir, "links"), path: map[string]string{}}
	s.state = filepath.Join(dir, "state")
	mustStorefs(t, s.state, "init", "--mode", mode, "--store-dir", sd)
	if err := os.MkdirAll(s.links, 0o755); err != nil {
		t.Fatal(err)
	}
	return s
}

// build adds each item as a file holding "NAME\n" with --ref for each of its
// references.
func (s *gcSide) build(items []gcItem) {
	s.t.Helper()
	src := filepath.Join(filepath.Dir(s.state), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		s.t.Fatal(err)
	}
	for _, it := range items {
		f := filepath.Join(src, it.name)
		if err := os.WriteFile(f, []byte(it.name+"\n"), 0o644); err != nil {
			s.t.Fatal(err)
		}
		args := []string{"add", "--name", it.name}
		for _, r := range it.refs {
			args = append(args, "--ref", s.path[r])
		}
		out := mustStorefs(s.t, s.state, append(args, f)...).lines()
		if len(out) != 1 {
			s.t.Fatalf("storefs add %s printed %q", it.name, out)
		}
		s.path[it.name] = out[0]
	}
}

func (s *gcSide) autoDir() string { return filepath.Join(s.state, "gcroots", "auto") }

func (s *gcSide) view() gcView {
	s.t.Helper()
	return gcView{
		roots: gcRootLines(mustStorefs(s.t, s.state, "gc", "--print-roots").lines(), map[string]string{
			filepath.Join(s.state, "gcroots"): "gcroots",
			s.links:                           "links",
		}),
		live: gcNames(mustStorefs(s.t, s.state, "gc", "--print-live").lines()),
		dead: gcNames(mustStorefs(s.t, s.state, "gc", "--print-dead").lines()),
		auto: gcCountDir(s.t, s.autoDir()),
	}
}

func (s *gcSide) valid() []string { s.t.Helper(); return gcNames(listStore(s.t, s.state)) }

// delete runs storefs delete and reports whether it refused (exit 1 with
// "still alive"); any other failure fails the test.
func (s *gcSide) delete(item string) (refused bool) {
	s.t.Helper()
	r := storefs(s.t, s.state, "delete", s.path[item])
	switch {
	case r.code == 0:
		return false
	case r.code == 1 && strings.Contains(r.stderr, "still alive"):
		return true
	}
	s.t.Fatalf("storefs delete %s: exit %d, stderr:\n%s", item, r.code, r.stderr)
	return false
}

func (s *gcSide) do(st gcStep) {
	s.t.Helper()
	switch st.op {
	case "root":
		mustStorefs(s.t, s.state, "root", "add", st.name, s.path[st.item])
	case "unroot":
		mustStorefs(s.t, s.state, "root", "remove", st.name)
	case "iroot":
		mustStorefs(s.t, s.state, "root", "add", "--indirect", filepath.Join(s.links, st.name), s.path[st.item])
	case "rmlink":
		if err := os.Remove(filepath.Join(s.links, st.name)); err != nil {
			s.t.Fatal(err)
		}
	case "iremove":
		mustStorefs(s.t, s.state, "root", "remove", filepath.Join(s.links, st.name))
	case "rawroot", "subroot", "fileroot", "ghost":
		gcHandRoot(s.t, filepath.Join(s.state, "gcroots"), st, s.path)
	case "junk":
		if s.mode == "disk" {
			gcMakeEntry(s.t, s.state, gcFakeBase(st.name))
		}
	case "gc":
		mustStorefs(s.t, s.state, "gc")
	default:
		s.t.Fatalf("gcSide.do: bad step %v", st)
	}
}

// gcGhost is a store path (under /gnu/store) that is never valid.
var gcGhost = "/gnu/store/" + gcFakeBase("ghost")

// gcHandRoot makes a root in the gcroots dir by hand (rawroot, subroot,
// fileroot, ghost).
func gcHandRoot(t testing.TB, gcroots string, st gcStep, path map[string]string) {
	t.Helper()
	var link, target string
	switch st.op {
	case "rawroot":
		link, target = filepath.Join(gcroots, st.name), path[st.item]
	case "subroot":
		link, target = filepath.Join(gcroots, st.name), path[st.item]+"/f"
	case "ghost":
		link, target = filepath.Join(gcroots, st.name), gcGhost
	case "fileroot":
		link = filepath.Join(gcroots, filepath.Base(path[st.item]))
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	var err error
	if target == "" {
		err = os.WriteFile(link, nil, 0o644)
	} else {
		err = os.Symlink(target, link)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// gcScenarios are the reference graphs and the steps run on them.
var gcScenarios = []struct {
	name  string
	items []gcItem
	steps []gcStep
}{
	{
		name:  "chain",
		items: []gcItem{{"chain-a", nil}, {"chain-b", []string{"chain-a"}}, {"chain-c", []string{"chain-b"}}, {"chain-x", nil}},
		steps: []gcStep{
			{op: "print"},
			{op: "root", name: "rc", item: "chain-c"},
			{op: "print"},
			{op: "delete", item: "chain-a"}, // alive through c: refused
			{op: "delete", item: "chain-c"}, // a root itself: refused
			{op: "delete", item: "chain-x"}, // dead, no referrers: deleted
			{op: "print"},
			{op: "unroot", name: "rc"},
			{op: "print"},
			{op: "delete", item: "chain-c"}, // dead now, no referrers
			{op: "print"},
			{op: "gc"},
		},
	},
	{
		name: "diamond",
		items: []gcItem{
			{"dia-a", nil}, {"dia-b", []string{"dia-a"}}, {"dia-c", []string{"dia-a"}},
			{"dia-d", []string{"dia-b", "dia-c"}}, {"dia-e", []string{"dia-d"}}, {"dia-lone", nil},
		},
		steps: []gcStep{
			{op: "root", name: "rb", item: "dia-b"},
			{op: "print"},
			{op: "delete", item: "dia-a"}, // alive through b
			{op: "delete", item: "dia-e"}, // dead leaf
			{op: "print"},
			{op: "root", name: "rd", item: "dia-d"},
			{op: "print"},
			{op: "delete", item: "dia-c"}, // alive through d now
			{op: "unroot", name: "rd"},
			{op: "print"},
			{op: "gc"}, // d and c and lone go; a and b stay
			{op: "print"},
			{op: "unroot", name: "rb"},
			{op: "gc"},
		},
	},
	{
		name: "shared",
		items: []gcItem{
			{"sh-x", nil}, {"sh-y", []string{"sh-x"}}, {"sh-p", []string{"sh-y"}}, {"sh-q", []string{"sh-x"}}, {"sh-dead", []string{"sh-x"}},
		},
		steps: []gcStep{
			{op: "root", name: "rp", item: "sh-p"},
			{op: "iroot", name: "iq", item: "sh-q"},
			{op: "print"},
			{op: "delete", item: "sh-dead"}, // dead, though its reference is alive
			{op: "unroot", name: "rp"},
			{op: "print"},
			{op: "delete", item: "sh-p"}, // dead leaf now
			{op: "delete", item: "sh-x"}, // alive through the indirect root
			{op: "rmlink", name: "iq"},   // the indirect root goes stale
			{op: "print"},                // ... and its auto link is removed, even by --print-*
			{op: "gc"},
		},
	},
	{
		name: "indirect",
		items: []gcItem{
			{"ind-a", nil}, {"ind-b", []string{"ind-a"}}, {"ind-c", nil}, {"ind-d", []string{"ind-c"}},
		},
		steps: []gcStep{
			{op: "iroot", name: "lb", item: "ind-b"},
			{op: "iroot", name: "ld", item: "ind-d"},
			{op: "root", name: "rd", item: "ind-d"}, // direct and indirect on one path
			{op: "root", name: "rd2", item: "ind-d"},
			{op: "print"},
			{op: "iremove", name: "ld"},
			{op: "unroot", name: "rd"},
			{op: "print"}, // still alive through rd2
			{op: "unroot", name: "rd2"},
			{op: "print"},
			{op: "delete", item: "ind-a"}, // alive through the link lb
			{op: "rmlink", name: "lb"},
			{op: "print"},
			{op: "delete", item: "ind-b"},
			{op: "gc"},
		},
	},
	{
		// roots made by hand, as a user or another tool would: nested in
		// directories, pointing below an item, regular files, a root to a
		// path that is not valid; and an invalid entry in the store dir
		name:  "odd-roots",
		items: []gcItem{{"odd-a", nil}, {"odd-b", []string{"odd-a"}}, {"odd-c", nil}, {"odd-d", nil}, {"odd-e", nil}, {"odd-f", nil}},
		steps: []gcStep{
			{op: "rawroot", name: "deep/er/x", item: "odd-b"},
			{op: "subroot", name: "sub", item: "odd-c"},
			{op: "fileroot", item: "odd-d"},
			{op: "print"},
			{op: "ghost", name: "ghost"},
			{op: "print"},
			{op: "junk", name: "odd-junk"},
			{op: "print"},
			{op: "gc"},
			{op: "print"},
		},
	},
	{
		// a dead path that a dead path refers to: Guix's `guix gc -D` deletes
		// it with its dead referrers, Nix 2.8's --delete refuses it.
		name:  "dead-referrer",
		items: []gcItem{{"dr-a", nil}, {"dr-b", []string{"dr-a"}}, {"dr-c", []string{"dr-b"}}, {"dr-keep", nil}},
		steps: []gcStep{
			{op: "root", name: "rk", item: "dr-keep"},
			{op: "print"},
			{op: "delete", item: "dr-a"},
			{op: "print"},
			{op: "gc"},
		},
	},
}

// gcDeleteLikeNix: `storefs delete P` of a dead P with dead referrers must be
// refused as Nix 2.8 refuses it (true), or delete P and those referrers as
// Guix does (false: what storefs documents).
const gcDeleteLikeNix = true

// TestGCMatchesNix runs each scenario against a throw-away Nix store and
// storefs stores of both modes (store dir /gnu/store), step by step: after
// every "print" the roots, live and dead sets (by name) and the number of
// gcroots/auto entries must be the same; a "delete" must be refused by
// storefs exactly when the path is alive for Nix (--print-live); after a
// delete or a gc the valid paths must be the same.
//
// One difference is known and expected: a dead path that other dead paths
// refer to. Nix 2.8's `nix-store --delete P` refuses it ("still alive": its
// deleteReferrersClosure stops at referrers not asked for), while storefs
// deletes P with its dead referrers as Guix's `guix gc -D` does
// (tryToDelete/deletePathRecursive: "we only delete 'path' and its
// referrers"), which storefs's `delete --help` documents. The test then
// checks storefs's (Guix's) behaviour, deletes the same paths on the Nix side
// (P with its referrers), and logs the difference; gcDeleteLikeNix makes it
// demand Nix 2.8's refusal instead.
func TestGCMatchesNix(t *testing.T) {
	nix := requireNix(t)
	const sd = "/gnu/store"
	for _, sc := range gcScenarios {
		t.Run(sc.name, func(t *testing.T) {
			nx := newGCNix(t, nix, sd)
			nx.build(sc.items)
			var sides []*gcSide
			for _, mode := range modes {
				s := newGCSide(t, mode, sd)
				s.build(sc.items)
				sides = append(sides, s)
			}
			compareValid := func(i int, st gcStep) {
				t.Helper()
				want := nx.valid()
				for _, s := range sides {
					if got := s.valid(); !slices.Equal(got, want) {
						t.Errorf("step %d %v (%s): storefs valid paths %q, Nix %q", i, st, s.mode, got, want)
					}
				}
			}
			for i, st := range sc.steps {
				switch st.op {
				case "print":
					want := nx.view()
					t.Logf("step %d: Nix: %v", i, want)
					for _, s := range sides {
						want := want
						if s.mode != "disk" { // no store dir, no invalid entries
							want.dead = slices.DeleteFunc(slices.Clone(want.dead), func(n string) bool { return strings.HasSuffix(n, "junk") })
						}
						if got := s.view(); !gcSameView(got, want) {
							t.Errorf("step %d (%s): storefs gc --print-*:\n got  %v\n want %v (nix-store --gc --print-*)", i, s.mode, got, want)
						}
					}
				case "delete":
					alive := slices.Contains(nx.view().live, st.item)
					nixRefused, nixErr := nx.delete(st.item)
					if nixRefused != alive {
						refs := nx.referrersClosure(st.item)
						if !nixRefused || len(refs) < 2 {
							t.Fatalf("step %d: nix-store --delete %s refused=%v, but it is alive=%v for --print-live (%s)", i, st.item, nixRefused, alive, nixErr)
						}
						t.Logf("step %d: known difference: nix-store --delete %s refuses a dead path with dead referrers %v (Nix 2.8); storefs, as `guix gc -D`, deletes them all", i, st.item, refs)
						if !gcDeleteLikeNix { // delete on the Nix side what storefs deletes
							rest := slices.DeleteFunc(refs, func(n string) bool { return n == st.item })
							if again, e := nx.delete(append([]string{st.item}, rest...)...); again {
								t.Fatalf("nix-store --delete %s with its referrers %v refused: %s", st.item, rest, e)
							}
						}
					}
					want := alive
					if gcDeleteLikeNix {
						want = nixRefused
					}
					for _, s := range sides {
						if got := s.delete(st.item); got != want {
							t.Errorf("step %d (%s): storefs delete %s refused=%v, want refused=%v (alive for Nix: %v; nix-store --delete refused=%v)", i, s.mode, st.item, got, want, alive, nixRefused)
						}
					}
					compareValid(i, st)
				default:
					nx.do(st)
					for _, s := range sides {
						s.do(st)
					}
					if st.op == "gc" {
						compareValid(i, st)
					}
				}
			}
			for _, s := range sides {
				checkVerify(t, s.state)
			}
		})
	}
}

// ---- TestGCRace ----

type gcRaceAdd struct {
	src    string
	root   string // "" when added without a root
	path   string
	code   int
	stderr string
}

// gcRacePool is content shared between items (>= 8192 bytes, so disk mode
// links it through .links and blob mode stores it once): collecting the
// unrooted items that use it races with adds that rely on it.
func gcRacePool() [][]byte {
	r := newRNG(4242)
	var pool [][]byte
	for i := range 4 {
		pool = append(pool, r.bytes(9000+i*1500))
	}
	return pool
}

// TestGCRace: four processes add small random items in a loop (two in three
// with --root, the others without: a collection may take those), while a
// fifth runs `storefs gc` in a loop. Every add must succeed (an add may fail
// only with an error saying a collection interfered: counted and logged, at
// most a handful allowed), every gc must succeed, every rooted item must be
// valid afterwards and export to the NAR of its source, and verify
// --contents must pass. Blob mode runs 8 s, disk mode 7 s, chunk mode 6 s.
func TestGCRace(t *testing.T) {
	for _, c := range []struct {
		mode string
		d    time.Duration
	}{{"blob", 8 * time.Second}, {"disk", 7 * time.Second}, {"chunk", 6 * time.Second}} {
		t.Run(c.mode, func(t *testing.T) { gcRace(t, c.mode, c.d) })
	}
}

func gcRace(t *testing.T, mode string, d time.Duration) {
	state := initStore(t, mode, "/gnu/store")
	srcRoot := tempDir(t)
	pool := gcRacePool()
	libs := [][]byte{newRNG(7).bytes(300 << 10), newRNG(8).bytes(500 << 10)}
	const procs = 4
	ctx, cancel := context.WithTimeout(context.Background(), d+commandTimeout)
	defer cancel()
	deadline := time.Now().Add(d)

	run := func(args ...string) (string, int, string) {
		cmd := storefsCmd(ctx, state, args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
			errb.WriteString(err.Error())
		}
		return strings.TrimSpace(out.String()), code, errb.String()
	}

	adds := make([][]gcRaceAdd, procs)
	var (
		unrootedMu sync.Mutex
		unrooted   []string // unrooted items, for the late rooter
	)
	var wg sync.WaitGroup
	for k := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := newRNG(uint64(1000 + k))
			for i := 0; time.Now().Before(deadline); i++ {
				dir := filepath.Join(srcRoot, fmt.Sprintf("item-%d-%d", k, i))
				if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
					t.Error(err)
					return
				}
				files := map[string][]byte{
					"id":        []byte(fmt.Sprintf("%d %d\n", k, i)),
					"data":      r.bytes(1 + r.intn(3000)),
					"sub/small": r.bytes(r.intn(200)),
				}
				if r.intn(2) == 0 {
					files["shared"] = pool[r.intn(len(pool))]
				}
				if r.intn(3) == 0 {
					files["sub/shared"] = pool[r.intn(len(pool))]
				}
				if mode == "chunk" && r.intn(2) == 0 {
					// a file of chunks shared with others: one of a few
					// "libraries" with a byte inserted at a random place
					lib := libs[r.intn(len(libs))]
					at := r.intn(len(lib))
					files["lib.so"] = append(append(append([]byte{}, lib[:at]...), byte(i)), lib[at:]...)
				}
				for name, data := range files {
					if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
						t.Error(err)
						return
					}
				}
				a := gcRaceAdd{src: dir}
				args := []string{"add"}
				if i%3 != 2 {
					a.root = fmt.Sprintf("r%d-%d", k, i)
					args = append(args, "--root", a.root)
				}
				a.path, a.code, a.stderr = run(append(args, dir)...)
				adds[k] = append(adds[k], a)
				if a.root == "" && a.code == 0 {
					unrootedMu.Lock()
					unrooted = append(unrooted, a.path)
					unrootedMu.Unlock()
				}
			}
		}()
	}
	// a late rooter: `storefs root add` of items added without a root, while
	// collections may be deleting them; it must either fail with "not
	// valid" or leave the item rooted and valid for good
	lateRoots := map[string]string{} // root name -> path
	lateRefused := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; time.Now().Before(deadline); {
			unrootedMu.Lock()
			var p string
			if len(unrooted) > 0 {
				p = unrooted[len(unrooted)-1]
				unrooted = unrooted[:len(unrooted)-1]
			}
			unrootedMu.Unlock()
			if p == "" {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if n%2 == 0 { // give the collector a chance at it
				time.Sleep(time.Duration(n%7) * 10 * time.Millisecond)
			}
			name := fmt.Sprintf("late-%d", n)
			n++
			_, code, stderr := run("root", "add", name, p)
			switch {
			case code == 0:
				lateRoots[name] = p
			case code == 1 && strings.Contains(stderr, "not valid"):
				lateRefused++
			default:
				t.Errorf("storefs root add %s %s: exit %d: %s", name, p, code, stderr)
			}
		}
	}()
	var gcs, gcFailed int
	var gcErrs []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Now().Before(deadline) {
			out, code, stderr := run("gc")
			gcs++
			if code != 0 {
				gcFailed++
				gcErrs = append(gcErrs, fmt.Sprintf("exit %d: %s %s", code, out, stderr))
			}
		}
	}()
	wg.Wait()

	var all []gcRaceAdd
	for _, a := range adds {
		all = append(all, a...)
	}
	interfered, rooted := 0, 0
	var ok []gcRaceAdd
	for _, a := range all {
		switch {
		case a.code == 0:
			ok = append(ok, a)
			if a.root != "" {
				rooted++
			}
		case strings.Contains(a.stderr, "collection"):
			interfered++
			t.Logf("add %s: a collection interfered (exit %d): %s", a.src, a.code, strings.TrimSpace(a.stderr))
		default:
			t.Errorf("storefs add %s (root %q): exit %d: %s", a.src, a.root, a.code, a.stderr)
		}
	}
	if gcFailed > 0 {
		t.Errorf("%d of %d storefs gc runs failed; first: %s", gcFailed, gcs, gcErrs[0])
	}
	if interfered > 5 {
		t.Errorf("%d adds failed because a collection interfered: more than a handful", interfered)
	}
	if gcs < 3 || len(all) < 20 {
		t.Errorf("too little happened: %d adds, %d collections", len(all), gcs)
	}

	valid := map[string]bool{}
	for _, p := range listStore(t, state) {
		valid[p] = true
	}
	roots := map[string]string{}
	for _, l := range mustStorefs(t, state, "root", "list").lines() {
		link, p, _ := strings.Cut(l, " -> ")
		roots[filepath.Base(link)] = p
	}
	lateRooted := map[string]bool{}
	for name, p := range lateRoots {
		lateRooted[p] = true
		if !valid[p] {
			t.Errorf("%s was rooted (storefs root add %s exited 0) while collections ran, but is not valid afterwards", p, name)
		} else if roots[name] != p {
			t.Errorf("root %s -> %q, want %s", name, roots[name], p)
		}
	}
	collected := 0
	var check []gcRaceAdd
	for _, a := range ok {
		switch {
		case a.root != "" && !valid[a.path]:
			t.Errorf("rooted item %s (root %s) is not valid after the run", a.path, a.root)
		case a.root != "" && roots[a.root] != a.path:
			t.Errorf("root %s -> %q, want %s", a.root, roots[a.root], a.path)
		case valid[a.path]:
			check = append(check, a)
		default:
			collected++
		}
	}
	t.Logf("%s: %d adds (%d rooted) in %v by %d processes, %d collections alongside; %d unrooted items collected; %d adds failed because a collection interfered; %d unrooted items rooted later (%d refused as collected already)",
		mode, len(all), rooted, d, procs, gcs, collected, interfered, len(lateRoots), lateRefused)

	// every item still valid exports to its source's NAR
	jobs := make(chan gcRaceAdd)
	var ewg sync.WaitGroup
	for range 8 {
		ewg.Add(1)
		go func() {
			defer ewg.Done()
			for a := range jobs {
				got, _, err := exportSHA256(t, state, a.path)
				if err != nil {
					t.Errorf("%v", err)
				} else if want := narSHA256(t, a.src); got != want {
					t.Errorf("storefs export %s differs from the NAR of its source %s", a.path, a.src)
				}
			}
		}()
	}
	for _, a := range check {
		jobs <- a
	}
	close(jobs)
	ewg.Wait()
	checkVerify(t, state)

	// a last collection on a quiet store: only rooted items are left, and
	// (disk mode) nothing in the store dir but them and .links
	mustStorefs(t, state, "gc")
	left := listStore(t, state)
	if len(left) != rooted+len(lateRooted) {
		t.Errorf("after a final gc %d paths are valid, want the %d rooted ones", len(left), rooted+len(lateRooted))
	}
	if mode == "disk" {
		var bases []string
		for _, p := range left {
			bases = append(bases, filepath.Base(p))
		}
		if got := diskStoreEntries(t, state); !sameSet(got, bases) {
			t.Errorf("store/ holds %d entries besides .links, want the %d valid items: extra %v", len(got), len(bases), gcMinus(got, bases))
		}
	}
	checkVerify(t, state)
	checkTmpEmpty(t, state)
}

// gcMinus is a without the elements of b.
func gcMinus(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}

// ---- scenarios ----

// gcAddFile adds a one-file item (content data, name name, references refs)
// and returns its path.
func gcAddFile(t testing.TB, state, name string, data []byte, refs ...string) string {
	t.Helper()
	dir := filepath.Join(tempDir(t), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"add"}
	for _, r := range refs {
		args = append(args, "--ref", r)
	}
	out := mustStorefs(t, state, append(args, dir)...).lines()
	if len(out) != 1 {
		t.Fatalf("storefs add printed %q", out)
	}
	return out[0]
}

// gcFakeBase is a well-formed base name nothing registers.
func gcFakeBase(name string) string { return "0123456789abcdfghijklmnpqrsvwxyz-" + name }

// gcMakeEntry makes an (invalid) item directory <state>/store/BASE.
func gcMakeEntry(t testing.TB, state, base string) string {
	t.Helper()
	p := filepath.Join(state, "store", base)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "f"), []byte("half-added\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	return p
}

func gcExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// gcValidRefsClosed checks that every valid path's references are valid.
func gcValidRefsClosed(t testing.TB, state string) {
	t.Helper()
	paths := listStore(t, state)
	if len(paths) == 0 {
		return
	}
	valid := map[string]bool{}
	for _, p := range paths {
		valid[p] = true
	}
	for _, in := range storefsInfo(t, state, paths...) {
		for _, r := range in.References {
			if !valid[r] {
				t.Errorf("%s refers to %s, which is not valid", in.Path, r)
			}
		}
	}
}

func TestGCScenarios(t *testing.T) {
	// §8.15: a path temp-rooted before it appears in the store survives a
	// collection that runs before it is registered; an invalid entry no one
	// temp-roots goes. The temp root is held here, in-process, through the
	// store package; the collection runs both in another process (storefs gc)
	// and in this one.
	t.Run("15-temp-rooted-invalid-entry", func(t *testing.T) {
		state := initStore(t, "disk", "/gnu/store")
		s, err := store.Open(state, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		kept, gone := gcFakeBase("being-added"), gcFakeBase("left-over")
		tr := s.NewTempRoots()
		defer tr.Close()
		if err := tr.Add(kept); err != nil {
			t.Fatal(err)
		}
		keptP, goneP := gcMakeEntry(t, state, kept), gcMakeEntry(t, state, gone)
		mustStorefs(t, state, "gc")
		if !gcExists(keptP) {
			t.Errorf("storefs gc deleted %s, temp-rooted by pid %d", kept, os.Getpid())
		}
		if gcExists(goneP) {
			t.Errorf("storefs gc left the invalid, unrooted entry %s", gone)
		}
		gcMakeEntry(t, state, gone)
		if _, err := s.CollectGarbage(context.Background(), store.GCOptions{}); err != nil {
			t.Fatalf("CollectGarbage: %v", err)
		}
		if !gcExists(keptP) {
			t.Errorf("CollectGarbage deleted %s, temp-rooted", kept)
		}
		if gcExists(goneP) {
			t.Errorf("CollectGarbage left the invalid, unrooted entry %s", gone)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		mustStorefs(t, state, "gc")
		if gcExists(keptP) {
			t.Errorf("storefs gc left %s once its temp root was released", kept)
		}
		checkVerify(t, state)
	})

	for _, mode := range modes {
		t.Run("15-temp-rooted-valid-"+mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			p := gcAddFile(t, state, "temp-rooted", []byte("kept while temp-rooted\n"))
			s, err := store.Open(state, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			tr := s.NewTempRoots()
			if err := tr.Add(filepath.Base(p)); err != nil {
				t.Fatal(err)
			}
			if dead := mustStorefs(t, state, "gc", "--print-dead").lines(); len(dead) != 0 {
				t.Errorf("storefs gc --print-dead = %q with %s temp-rooted", dead, p)
			}
			if r := storefs(t, state, "delete", p); r.code != 1 || !strings.Contains(r.stderr, "still alive") {
				t.Errorf("storefs delete of the temp-rooted %s: exit %d, %q; want exit 1, still alive", p, r.code, r.stderr)
			}
			mustStorefs(t, state, "gc")
			if got := listStore(t, state); !slices.Equal(got, []string{p}) {
				t.Errorf("after gc with a temp root: ls = %q, want %s", got, p)
			}
			tr.Close()
			mustStorefs(t, state, "gc")
			if got := listStore(t, state); len(got) != 0 {
				t.Errorf("after gc without the temp root: ls = %q, want nothing", got)
			}
			checkVerify(t, state)
		})

		// §8.17: a temp-roots file no live process holds a lock on is stale:
		// gc removes it and ignores its roots.
		t.Run("17-stale-temproots-"+mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			p := gcAddFile(t, state, "stale-rooted", []byte("only a dead process roots me\n"))
			dir := filepath.Join(state, "temproots")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			stale := filepath.Join(dir, "2147480000-1")
			content := filepath.Base(p) + "\x00"
			var inv string
			if mode == "disk" {
				inv = gcFakeBase("stale-invalid")
				gcMakeEntry(t, state, inv)
				content += inv + "\x00"
			}
			if err := os.WriteFile(stale, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			r := mustStorefs(t, state, "gc")
			if gcExists(stale) {
				t.Errorf("storefs gc left the stale temp-roots file %s", stale)
			}
			if got := listStore(t, state); len(got) != 0 {
				t.Errorf("after gc: ls = %q; the stale file's root %s should have been ignored (gc said %s)", got, p, r.stdout)
			}
			if inv != "" && gcExists(filepath.Join(state, "store", inv)) {
				t.Errorf("storefs gc kept %s, rooted only by a stale temp-roots file", inv)
			}
			checkVerify(t, state)
		})

		// §8.20: deleting a path with a live referrer is refused and changes
		// nothing.
		t.Run("20-delete-live-referrer-"+mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			a := gcAddFile(t, state, "dep", []byte("a dependency\n"))
			b := gcAddFile(t, state, "user", []byte("uses dep\n"), a)
			mustStorefs(t, state, "root", "add", "rb", b)
			before := mustStorefs(t, state, "info", "--json", a, b).stdout
			for _, p := range []string{a, b} {
				r := storefs(t, state, "delete", p)
				if r.code != 1 || !strings.Contains(r.stderr, "cannot delete path '"+p+"' since it is still alive") {
					t.Errorf("storefs delete %s: exit %d, stderr %q; want exit 1, \"cannot delete path '%s' since it is still alive\"", p, r.code, r.stderr, p)
				}
			}
			r := storefs(t, state, "delete", a, gcAddFile(t, state, "dead", []byte("dead\n")))
			if r.code != 1 {
				t.Errorf("storefs delete LIVE DEAD: exit %d, want 1 (nothing deleted)", r.code)
			}
			if got := listStore(t, state); len(got) != 3 {
				t.Errorf("after refused deletes: ls = %q, want 3 paths", got)
			}
			if after := mustStorefs(t, state, "info", "--json", a, b).stdout; !bytes.Equal(after, before) {
				t.Errorf("info changed after a refused delete:\nbefore %s\nafter  %s", before, after)
			}
			for _, p := range []string{a, b} {
				got, _, err := exportSHA256(t, state, p)
				if err != nil {
					t.Error(err)
				} else if in := storefsInfo(t, state, p)[0]; in.NarHash != store.NixHash(got) {
					t.Errorf("%s exports to %s, registered %s", p, store.NixHash(got), in.NarHash)
				}
			}
			checkVerify(t, state)
		})

		// §8.21: --max-freed stops early, leaving a sound store.
		t.Run("21-max-freed-"+mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			r := newRNG(21)
			var prev string
			var all []string
			for i := range 12 {
				var refs []string
				if i%3 != 0 {
					refs = []string{prev} // chains of three
				}
				prev = gcAddFile(t, state, fmt.Sprintf("mf-%02d", i), r.bytes(4096+i), refs...)
				all = append(all, prev)
			}
			keep := gcAddFile(t, state, "mf-keep", []byte("rooted\n"), all[0])
			mustStorefs(t, state, "root", "add", "keep", keep)
			size := map[string]int64{}
			for _, in := range storefsInfo(t, state, all...) {
				size[in.Path] = in.NarSize
			}
			const max = 10 << 10
			out := mustStorefs(t, state, "gc", "--max-freed", "10K", "--json").stdout
			var res struct {
				Deleted []string `json:"deleted"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("gc --json: %v in %s", err, out)
			}
			var sum int64
			for i, p := range res.Deleted {
				if sum >= max {
					t.Errorf("gc --max-freed 10K went on deleting %s (#%d) after %d bytes", p, i, sum)
				}
				sum += size[p]
			}
			if sum < max || len(res.Deleted) >= len(all)-1 {
				t.Errorf("gc --max-freed 10K deleted %d paths (%d NAR bytes) of %d dead: want it to stop once 10K were freed", len(res.Deleted), sum, len(all)-1)
			}
			left := listStore(t, state)
			if len(left) != len(all)+1-len(res.Deleted) {
				t.Errorf("%d paths valid after deleting %d of %d", len(left), len(res.Deleted), len(all)+1)
			}
			for _, p := range res.Deleted {
				if slices.Contains(left, p) {
					t.Errorf("%s reported deleted but still valid", p)
				}
			}
			checkVerify(t, state)
			gcValidRefsClosed(t, state)
			mustStorefs(t, state, "gc")
			if got := listStore(t, state); !sameSet(got, []string{all[0], keep}) {
				t.Errorf("after a full gc: ls = %q, want %s and %s", got, all[0], keep)
			}
			checkVerify(t, state)
		})

		// §8.22 (roots): stale gcroots/auto links are removed, by
		// --print-dead too; live ones stay.
		t.Run("22-stale-auto-links-"+mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			a := gcAddFile(t, state, "ia", []byte("a\n"))
			b := gcAddFile(t, state, "ib", []byte("b\n"))
			links := tempDir(t)
			la, lb := filepath.Join(links, "la"), filepath.Join(links, "lb")
			mustStorefs(t, state, "root", "add", "--indirect", la, a)
			mustStorefs(t, state, "root", "add", "--indirect", lb, b)
			auto := filepath.Join(state, "gcroots", "auto")
			if n := gcCountDir(t, auto); n != 2 {
				t.Fatalf("gcroots/auto has %d entries, want 2", n)
			}
			if err := os.Remove(la); err != nil {
				t.Fatal(err)
			}
			dead := mustStorefs(t, state, "gc", "--print-dead").lines()
			if !slices.Equal(dead, []string{a}) {
				t.Errorf("gc --print-dead = %q, want %s", dead, a)
			}
			if n := gcCountDir(t, auto); n != 1 {
				t.Errorf("after --print-dead gcroots/auto has %d entries, want 1 (the stale one removed)", n)
			}
			if got := mustStorefs(t, state, "root", "list").lines(); !slices.Equal(got, []string{lb + " -> " + b}) {
				t.Errorf("root list = %q, want %s -> %s", got, lb, b)
			}
			mustStorefs(t, state, "gc")
			if got := listStore(t, state); !slices.Equal(got, []string{b}) {
				t.Errorf("after gc: ls = %q, want %s", got, b)
			}
			if tgt, err := os.Readlink(lb); err != nil || tgt != b {
				t.Errorf("the live link %s: %q, %v", lb, tgt, err)
			}
			checkVerify(t, state)
		})
	}

	// A root made while a collection runs keeps its path: `storefs root add`
	// of a dead path the collection has not reached yet, exiting 0, must
	// leave the path valid. (The collection deletes dead paths in descending
	// base-name order, so the smallest is reached last.)
	for _, mode := range modes {
		t.Run("root-add-during-gc-"+mode, func(t *testing.T) {
			gcRootDuringGC(t, mode)
		})
	}

	// --runtime-roots keeps the items a running process has open (disk
	// mode: the files are under <state>/store); without it they go.
	t.Run("runtime-roots-disk", func(t *testing.T) {
		state := initStore(t, "disk", "/gnu/store")
		open := gcAddFile(t, state, "held-open", []byte("open in the test process\n"))
		cwd := gcAddFile(t, state, "other", []byte("nobody uses me\n"))
		f, err := os.Open(filepath.Join(state, "store", filepath.Base(open), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if dead := mustStorefs(t, state, "gc", "--runtime-roots", "--print-dead").lines(); !slices.Equal(dead, []string{cwd}) {
			t.Errorf("gc --runtime-roots --print-dead = %q, want %s only", dead, cwd)
		}
		mustStorefs(t, state, "gc", "--runtime-roots")
		if got := listStore(t, state); !slices.Equal(got, []string{open}) {
			t.Errorf("after gc --runtime-roots: ls = %q, want %s", got, open)
		}
		mustStorefs(t, state, "gc")
		if got := listStore(t, state); len(got) != 0 {
			t.Errorf("after gc: ls = %q, want nothing", got)
		}
		checkVerify(t, state)
	})

	// §8.22 (.links): gc prunes unused entries and stale temp links, never
	// .links itself, and leaves the entries live items use.
	t.Run("22-links-kept", func(t *testing.T) {
		state := initStore(t, "disk", "/gnu/store")
		r := newRNG(22)
		shared, own := r.bytes(20000), r.bytes(30000)
		live := gcAddFile(t, state, "live", shared)
		dir := filepath.Join(tempDir(t), "dead")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "shared"), shared, 0o644)
		os.WriteFile(filepath.Join(dir, "own"), own, 0o644)
		dead := mustStorefs(t, state, "add", dir).lines()[0]
		mustStorefs(t, state, "root", "add", "live", live)
		linksDir := filepath.Join(state, "store", ".links")
		if n := gcCountDir(t, linksDir); n != 2 {
			t.Fatalf(".links has %d entries, want 2", n)
		}
		staleTmp := filepath.Join(linksDir, ".tmp-link-2147480000-7")
		if err := os.WriteFile(staleTmp, []byte("x"), 0o444); err != nil {
			t.Fatal(err)
		}
		mustStorefs(t, state, "gc")
		if got := listStore(t, state); !slices.Equal(got, []string{live}) {
			t.Errorf("ls = %q, want %s (%s dead)", got, live, dead)
		}
		if n := gcCountDir(t, linksDir); n != 1 {
			t.Errorf(".links has %d entries after gc, want 1 (the one the live item uses): %v", n, filesUnder(t, linksDir))
		}
		if gcExists(staleTmp) {
			t.Errorf("gc left the stale temp link %s", staleTmp)
		}
		mustStorefs(t, state, "root", "remove", "live")
		mustStorefs(t, state, "gc")
		st, err := os.Stat(linksDir)
		if err != nil || !st.IsDir() {
			t.Errorf(".links after collecting everything: %v", err)
		}
		if n := gcCountDir(t, linksDir); n != 0 {
			t.Errorf(".links has %d entries with nothing valid", n)
		}
		if got := diskStoreEntries(t, state); len(got) != 0 {
			t.Errorf("store/ holds %q with nothing valid", got)
		}
		checkVerify(t, state)
	})

	// §8.24: a .links entry modified in place (which modifies every item
	// sharing it) is reported for each item and as a bad entry; --repair
	// removes the entry.
	t.Run("24-links-modified", func(t *testing.T) {
		state := initStore(t, "disk", "/gnu/store")
		r := newRNG(24)
		shared := r.bytes(16384)
		a := gcAddFile(t, state, "sharer-a", shared)
		b := gcAddFile(t, state, "sharer-b", append([]byte(nil), shared...), a)
		c := gcAddFile(t, state, "bystander", r.bytes(100))
		linksDir := filepath.Join(state, "store", ".links")
		ents := filesUnder(t, linksDir)
		if len(ents) != 1 {
			t.Fatalf(".links holds %v, want one entry", ents)
		}
		entry := filepath.Join(linksDir, ents[0])
		if err := os.Chmod(entry, 0o644); err != nil {
			t.Fatal(err)
		}
		bad := bytes.Clone(shared)
		for i := range bad[:64] {
			bad[i] ^= 0xff
		}
		f, err := os.OpenFile(entry, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bad[:64], 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		os.Chmod(entry, 0o444)

		res := storefs(t, state, "verify", "--contents")
		out := string(res.stdout)
		if res.code != 3 {
			t.Errorf("verify --contents: exit %d, want 3\n%s%s", res.code, out, res.stderr)
		}
		for _, p := range []string{a, b} {
			if !strings.Contains(out, p+": was modified!") {
				t.Errorf("verify --contents does not report %s \"was modified!\":\n%s", p, out)
			}
		}
		if strings.Contains(out, c) {
			t.Errorf("verify --contents reports the untouched %s:\n%s", c, out)
		}
		if !strings.Contains(out, "link "+entry+" was modified") {
			t.Errorf("verify --contents does not report the entry %s:\n%s", entry, out)
		}

		res = storefs(t, state, "verify", "--contents", "--repair")
		out = string(res.stdout)
		if !strings.Contains(out, "repaired: link "+entry+" was modified: removed it") {
			t.Errorf("verify --contents --repair does not report removing %s:\n%s", entry, out)
		}
		if gcExists(entry) {
			t.Errorf("verify --contents --repair left %s", entry)
		}
		if res.code != 3 || !strings.Contains(out, a+": was modified!") {
			t.Errorf("verify --contents --repair: exit %d, want 3 with the items still reported modified (nothing to re-substitute them from):\n%s", res.code, out)
		}
	})

	// verify --repair: an item whose directory is gone is unregistered when
	// nothing valid refers to it, and refused otherwise.
	t.Run("verify-repair-gone", func(t *testing.T) {
		state := initStore(t, "disk", "/gnu/store")
		lone := gcAddFile(t, state, "lone", []byte("lone\n"))
		dep := gcAddFile(t, state, "dep", []byte("dep\n"))
		user := gcAddFile(t, state, "user", []byte("user\n"), dep)
		rm := func(p string) {
			d := filepath.Join(state, "store", filepath.Base(p))
			makeWritable(d)
			if err := os.RemoveAll(d); err != nil {
				t.Fatal(err)
			}
		}
		rm(lone)
		if r := storefs(t, state, "verify"); r.code != 3 || !strings.Contains(string(r.stdout), lone) {
			t.Errorf("verify with %s gone: exit %d, want 3 naming it:\n%s", lone, r.code, r.stdout)
		}
		r := storefs(t, state, "verify", "--repair")
		if r.code != 0 || !strings.Contains(string(r.stdout), "repaired: "+lone) {
			t.Errorf("verify --repair: exit %d, want 0 reporting %s repaired:\n%s%s", r.code, lone, r.stdout, r.stderr)
		}
		if got := listStore(t, state); !sameSet(got, []string{dep, user}) {
			t.Errorf("after repair: ls = %q, want %s %s", got, dep, user)
		}
		mustStorefs(t, state, "verify")

		rm(dep)
		r = storefs(t, state, "verify", "--repair")
		if r.code != 3 || !strings.Contains(string(r.stdout), dep) || strings.Contains(string(r.stdout), "repaired: "+dep) {
			t.Errorf("verify --repair with %s gone but %s referring to it: exit %d, want 3 with the problem kept:\n%s", dep, user, r.code, r.stdout)
		}
		if got := listStore(t, state); !sameSet(got, []string{dep, user}) {
			t.Errorf("after a refused repair: ls = %q, want %s %s", got, dep, user)
		}
		if r := storefs(t, state, "verify"); r.code != 3 {
			t.Errorf("verify after a refused repair: exit %d, want 3", r.code)
		}
	})
}

// TestGCWithMount: with a blob-mode store mounted, `storefs gc` (which goes
// through the mount's daemon.sock) removes a dead item from the mount at
// once, while a file of it opened before keeps reading its full contents.
func TestGCWithMount(t *testing.T) {
	requireFUSE(t)
	state := initStore(t, "blob", "/gnu/store")
	r := newRNG(77)
	data := r.bytes(3<<20 + 123)
	keepData := []byte("rooted\n")
	srcDir := tempDir(t)
	mk := func(name string, files map[string][]byte) string {
		d := filepath.Join(srcDir, name)
		os.MkdirAll(d, 0o755)
		for n, b := range files {
			if err := os.WriteFile(filepath.Join(d, n), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	doomed := mustStorefs(t, state, "add", mk("doomed", map[string][]byte{"big": data, "small": []byte("small\n")})).lines()[0]
	keep := mustStorefs(t, state, "add", "--root", "keep", mk("keep", map[string][]byte{"f": keepData})).lines()[0]

	mp := filepath.Join(tempDir(t), "mnt")
	os.MkdirAll(mp, 0o755)
	m := startMount(t, state, mp)
	m.waitServing(t)

	base := filepath.Base(doomed)
	f, err := os.Open(filepath.Join(mp, base, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 4096)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, data[:4096]) {
		t.Fatalf("reading the first 4 KiB before gc: %v", err)
	}

	if !gcExists(filepath.Join(state, "daemon.sock")) {
		t.Fatalf("the mount serves no %s/daemon.sock", state)
	}
	r2 := mustStorefs(t, state, "gc") // through daemon.sock
	if !strings.HasPrefix(string(r2.stdout), "1 store paths deleted") {
		t.Errorf("storefs gc through the mount: %q, want 1 store path deleted", r2.stdout)
	}
	ents, err := os.ReadDir(mp)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{filepath.Base(keep)}) {
		t.Errorf("ls %s right after gc = %q, want only %s", mp, names, filepath.Base(keep))
	}
	for _, p := range []string{filepath.Join(mp, base), filepath.Join(mp, base, "small")} {
		if _, err := os.Stat(p); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("stat %s after gc: %v, want ENOENT", p, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(mp, filepath.Base(keep), "f")); err != nil || !bytes.Equal(got, keepData) {
		t.Errorf("the rooted item through the mount: %q, %v", got, err)
	}
	// the fd opened before still reads everything, from the start
	got, err := io.ReadAll(io.NewSectionReader(f, 0, int64(len(data))+1))
	if err != nil {
		t.Errorf("reading the open file after gc: %v", err)
	} else if !bytes.Equal(got, data) {
		t.Errorf("the open file after gc: %s", firstDiff(got, data))
	}
	if got := listStore(t, state); !slices.Equal(got, []string{keep}) {
		t.Errorf("storefs ls after gc = %q, want %s", got, keep)
	}
	f.Close()
	checkVerify(t, state)
}

func gcRootDuringGC(t *testing.T, mode string) {
	state := initStore(t, mode, "/gnu/store")
	src := tempDir(t)
	const n = 500
	var dirs []string
	for i := range n {
		d := filepath.Join(src, fmt.Sprintf("dead-%03d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f"), []byte(fmt.Sprintf("dead item %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		paths := mustStorefs(t, state, append([]string{"add"}, dirs...)...).lines()
		sort.Strings(paths)
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		gc := storefsCmd(ctx, state, "gc")
		var gcOut, gcErr bytes.Buffer
		gc.Stdout, gc.Stderr = &gcOut, &gcErr
		if err := gc.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- gc.Wait() }()
		// once the collection deletes, hold it between two deletions (it
		// takes <state>/gc.lock exclusively for each; adders and `root add`
		// take it shared, as this does) and root the two paths it reaches
		// last
		waitFor(5*time.Second, func() bool { return len(listStore(t, state)) < n })
		lock, err := os.OpenFile(filepath.Join(state, "gc.lock"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
			t.Fatal(err)
		}
		var rooted []string
		for i, p := range paths[:2] {
			if r := storefs(t, state, "root", "add", fmt.Sprintf("late-%d", i), p); r.code == 0 {
				rooted = append(rooted, p)
			} else if !strings.Contains(r.stderr, "not valid") {
				t.Fatalf("storefs root add %s: exit %d: %s", p, r.code, r.stderr)
			}
		}
		lock.Close()
		running := true
		select {
		case <-done:
			running = false
		default:
		}
		if running {
			<-done
		}
		cancel()
		if gc.ProcessState.ExitCode() != 0 {
			t.Fatalf("storefs gc: exit %d: %s", gc.ProcessState.ExitCode(), gcErr.String())
		}
		valid := listStore(t, state)
		for _, p := range rooted {
			if !slices.Contains(valid, p) {
				t.Errorf("storefs root add %s exited 0 while `storefs gc` ran (it printed %q), yet the collection deleted it: the root now points at an invalid path",
					p, strings.TrimSpace(gcOut.String()))
			}
		}
		checkVerify(t, state)
		if running && len(rooted) > 0 {
			return // conclusive: roots were made while the collection ran
		}
		for i := range 2 {
			storefs(t, state, "root", "remove", fmt.Sprintf("late-%d", i))
		}
	}
	t.Logf("the collection was always over before a root could be added: inconclusive")
}

// TestDiskStoreAsNobody: an ordinary user (nobody) runs a disk store from
// init to an empty store: adds, optimise, a root, and collections that
// delete small items in place and a large one through the trash, inside
// read-only directories that only the collector's chmod makes deletable for
// a user without root's override.
func TestDiskStoreAsNobody(t *testing.T) {
	t.Parallel()
	nb := newNobody(t)
	g := gen{t: t, r: newRNG(4711)}
	src := filepath.Join(nb.home, "src")
	tool := g.r.bytes(20000) // the same in every small item: optimise links them
	var srcs []string
	for i := range 3 {
		tree := filepath.Join(src, fmt.Sprintf("small-%d", i))
		g.file(filepath.Join(tree, "share", "doc", "a", "b", "readme.txt"), fmt.Appendf(nil, "item %d\n", i), false)
		g.file(filepath.Join(tree, "bin", "tool"), tool, true)
		srcs = append(srcs, tree)
	}
	big := filepath.Join(src, "big") // over 1 MiB of NAR: deleted through the trash
	g.file(filepath.Join(big, "lib", "x", "data"), g.r.bytes(2<<20), false)
	g.file(filepath.Join(big, "lib", "y", "tool"), tool, true)
	srcs = append(srcs, big)
	nb.chown()
	state := filepath.Join(nb.home, "state")
	run := func(args ...string) string {
		t.Helper()
		return nb.run("storefs "+strings.Join(args, " "), nb.cmd(state, args...))
	}
	run("init", "--mode", "disk", "--links-min-size", "0")
	paths := splitLines(run(append([]string{"add", "--no-dedup"}, srcs...)...))
	if len(paths) != 4 {
		t.Fatalf("add printed %q", paths)
	}
	if out := run("optimise"); !strings.HasPrefix(out, "3 files linked") {
		t.Errorf("optimise as nobody printed %q; want the three extra copies of bin/tool linked", out)
	}
	run("root", "add", "keep", paths[0])
	if out := run("gc"); !strings.HasPrefix(out, "3 store paths deleted") {
		t.Errorf("gc as nobody printed %q; want 3 store paths deleted", out)
	}
	if ls := splitLines(run("ls")); !slices.Equal(ls, paths[:1]) {
		t.Errorf("after gc, ls = %q; want only the rooted %s", ls, paths[0])
	}
	run("verify", "--contents")
	if got := diskStoreEntries(t, state); !slices.Equal(got, []string{filepath.Base(paths[0])}) {
		t.Errorf("store/ holds %v after gc; want only %s", got, filepath.Base(paths[0]))
	}
	run("root", "remove", "keep")
	if out := run("gc"); !strings.HasPrefix(out, "1 store paths deleted") {
		t.Errorf("last gc as nobody printed %q", out)
	}
	if got := diskStoreEntries(t, state); len(got) != 0 {
		t.Errorf("store/ holds %v after the last gc", got)
	}
	if got := filesUnder(t, filepath.Join(state, "store", ".links")); len(got) != 0 {
		t.Errorf(".links holds %v after the last gc", got)
	}
	checkTmpEmpty(t, state)
}
