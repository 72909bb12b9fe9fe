package registry_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
)

var (
	nA     = registrytest.Name("a")
	nB     = registrytest.Name("b")
	nC     = registrytest.Name("c")
	nD     = registrytest.Name("d")
	nValid = registrytest.Name("valid") // registered before each case
	nGhost = registrytest.Name("ghost") // never registered
)

func info(path string, refs ...string) *registry.PathInfo { return registrytest.Info(path, refs...) }

func mustGet(t *testing.T, r *registry.Registry, name string) *registry.PathInfo {
	t.Helper()
	pi, err := r.Get(name)
	if err != nil {
		t.Fatalf("Get(%q) = %v; want no error", name, err)
	}
	return pi
}

func mustValid(t *testing.T, r *registry.Registry, name string, want bool) {
	t.Helper()
	ok, err := r.IsValid(name)
	if err != nil || ok != want {
		t.Errorf("IsValid(%q) = %v, %v; want %v, nil", name, ok, err, want)
	}
}

func listAll(t *testing.T, r *registry.Registry) []string {
	t.Helper()
	var out []string
	if err := r.List("", func(n string) bool { out = append(out, n); return true }); err != nil {
		t.Fatalf("List(\"\") = %v; want no error", err)
	}
	return out
}

func TestRegisterReferences(t *testing.T) {
	tests := []struct {
		name    string
		batch   []*registry.PathInfo
		wantErr error // nil: the whole batch is registered
	}{
		{"no references", []*registry.PathInfo{info(nA)}, nil},
		{"reference to a valid path", []*registry.PathInfo{info(nA, nValid)}, nil},
		{"self-reference", []*registry.PathInfo{info(nA, nA)}, nil},
		{"self-reference and a valid one", []*registry.PathInfo{info(nA, nValid, nA)}, nil},
		{"reference later in the batch", []*registry.PathInfo{info(nA, nB), info(nB)}, nil},
		{"reference earlier in the batch", []*registry.PathInfo{info(nB), info(nA, nB)}, nil},
		{"chain in the batch, reversed", []*registry.PathInfo{info(nA, nB), info(nB, nC), info(nC, nValid, nC)}, nil},
		{"diamond in the batch", []*registry.PathInfo{info(nA, nB, nC), info(nB, nD), info(nC, nD), info(nD)}, nil},
		{"invalid reference", []*registry.PathInfo{info(nA, nGhost)}, registry.ErrNotValid},
		{"invalid reference in the last entry", []*registry.PathInfo{info(nA), info(nB, nValid), info(nC, nA, nGhost)}, registry.ErrNotValid},
		{"invalid reference in the first entry", []*registry.PathInfo{info(nA, nGhost), info(nB)}, registry.ErrNotValid},
		{"two-cycle", []*registry.PathInfo{info(nA, nB), info(nB, nA)}, registry.ErrCycle},
		{"three-cycle with self-references", []*registry.PathInfo{info(nA, nA, nB), info(nB, nC), info(nC, nC, nA), info(nD)}, registry.ErrCycle},
		{"cycle beside valid entries", []*registry.PathInfo{info(nD, nValid), info(nA, nB), info(nB, nA)}, registry.ErrCycle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := registrytest.New(t, "disk")
			registrytest.MustRegister(t, r, registrytest.Reg(info(nValid)))
			var names []string
			for _, pi := range tt.batch {
				names = append(names, pi.Path)
			}
			added, err := r.Register(registrytest.Reg(tt.batch...))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Register(%s) = %q, %v; want %v", tt.name, added, err, tt.wantErr)
				}
				if added != nil {
					t.Errorf("Register(%s) added %q with an error; want nil", tt.name, added)
				}
				for _, n := range names {
					mustValid(t, r, n, false)
				}
				if got, want := listAll(t, r), []string{nValid}; !slices.Equal(got, want) {
					t.Errorf("List after a refused batch = %q; want %q", got, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Register(%s) = %v; want no error", tt.name, err)
			}
			if !slices.Equal(added, names) {
				t.Errorf("Register(%s) added %q; want %q (batch order)", tt.name, added, names)
			}
			for _, pi := range tt.batch {
				got := mustGet(t, r, pi.Path)
				want := slices.Compact(slices.Sorted(slices.Values(pi.References)))
				if !slices.Equal(got.References, want) {
					t.Errorf("Get(%q).References = %q; want %q", pi.Path, got.References, want)
				}
			}
		})
	}
}

func TestRegisterSelfReferenceListed(t *testing.T) {
	r := registrytest.New(t, "disk")
	registrytest.MustRegister(t, r, registrytest.Reg(info(nA, nA)))
	if got := mustGet(t, r, nA).References; !slices.Equal(got, []string{nA}) {
		t.Errorf("Get(%q).References = %q; want %q", nA, got, []string{nA})
	}
	if got, err := r.Referrers(nA); err != nil || !slices.Equal(got, []string{nA}) {
		t.Errorf("Referrers(%q) = %q, %v; want %q", nA, got, err, []string{nA})
	}
	if got, err := r.Closure([]string{nA}); err != nil || !slices.Equal(got, []string{nA}) {
		t.Errorf("Closure(%q) = %q, %v; want %q", nA, got, err, []string{nA})
	}
}

func TestRegisterAgainIsNoOp(t *testing.T) {
	r := registrytest.New(t, "disk")
	orig := info(nA, nValid)
	registrytest.MustRegister(t, r, registrytest.Reg(info(nValid), info(nB), orig))
	before := mustGet(t, r, nA)

	changed := info(nA, nB) // different references
	changed.NarHash = digest("other")
	changed.NarSize = 1
	changed.Deriver = nB
	added, err := r.Register(registrytest.Reg(changed))
	if err != nil || len(added) != 0 {
		t.Errorf("Register(valid path again) = %q, %v; want nothing added, no error", added, err)
	}
	if got := mustGet(t, r, nA); !equalInfo(got, before) {
		t.Errorf("Get(%q) after re-registering = %+v; want the original %+v", nA, got, before)
	}
	if got, _ := r.Referrers(nB); len(got) != 0 {
		t.Errorf("Referrers(%q) = %q; want none (the second registration was ignored)", nB, got)
	}

	// Mixed batch: only the new path is added.
	added, err = r.Register(registrytest.Reg(info(nA), info(nC, nA)))
	if err != nil || !slices.Equal(added, []string{nC}) {
		t.Errorf("Register(valid %q, new %q) = %q, %v; want [%q], nil", nA, nC, added, err, nC)
	}

	// The same path twice in one batch is added once.
	added, err = r.Register(registrytest.Reg(info(nD), info(nD)))
	if err != nil || !slices.Equal(added, []string{nD}) {
		t.Errorf("Register(%q twice) = %q, %v; want [%q], nil", nD, added, err, nD)
	}

	// An empty batch is fine.
	if added, err := r.Register(nil); err != nil || len(added) != 0 {
		t.Errorf("Register(nil) = %q, %v; want nothing, nil", added, err)
	}
}

func equalInfo(a, b *registry.PathInfo) bool {
	return a.Path == b.Path && a.NarHash == b.NarHash && a.NarSize == b.NarSize &&
		slices.Equal(a.References, b.References) && a.Deriver == b.Deriver &&
		a.RegistrationTime.Equal(b.RegistrationTime) && a.CA == b.CA && a.Root == b.Root
}

// graph registers a small store: names[i] refers to the names in deps[i].
//
//	top -> left, right, top(self);  left -> base;  right -> base;  base
//	app -> lib -> libc;  tool (nothing)
func graph(t *testing.T, r *registry.Registry) map[string][]string {
	t.Helper()
	n := registrytest.Name
	g := map[string][]string{
		n("top"):   {n("left"), n("right"), n("top")},
		n("left"):  {n("base")},
		n("right"): {n("base")},
		n("base"):  nil,
		n("app"):   {n("lib")},
		n("lib"):   {n("libc")},
		n("libc"):  nil,
		n("tool"):  nil,
	}
	var batch []*registry.PathInfo
	for p, refs := range g {
		batch = append(batch, info(p, refs...))
	}
	registrytest.MustRegister(t, r, registrytest.Reg(batch...))
	return g
}

func TestReferrersMirrorReferences(t *testing.T) {
	r := registrytest.New(t, "disk")
	g := graph(t, r)
	want := map[string][]string{}
	for p, refs := range g {
		for _, q := range refs {
			want[q] = append(want[q], p)
		}
	}
	for p := range g {
		got, err := r.Referrers(p)
		if err != nil {
			t.Errorf("Referrers(%q) = %v; want no error", p, err)
			continue
		}
		w := slices.Sorted(slices.Values(want[p]))
		if !slices.Equal(got, w) {
			t.Errorf("Referrers(%q) = %q; want %q", p, got, w)
		}
		refs := mustGet(t, r, p).References
		if w := slices.Sorted(slices.Values(g[p])); !slices.Equal(refs, w) {
			t.Errorf("Get(%q).References = %q; want %q", p, refs, w)
		}
	}
	if got, err := r.Referrers(nGhost); !errors.Is(err, registry.ErrNotValid) {
		t.Errorf("Referrers(%q) = %q, %v; want ErrNotValid", nGhost, got, err)
	}
}

func TestClosure(t *testing.T) {
	r := registrytest.New(t, "disk")
	g := graph(t, r)
	n := registrytest.Name
	minmax := func(a, b string) (string, string) { return min(a, b), max(a, b) }
	l, rt := minmax(n("left"), n("right"))
	tests := []struct {
		name  string
		names []string
		want  []string
	}{
		{"leaf", []string{n("base")}, []string{n("base")}},
		{"chain", []string{n("app")}, []string{n("libc"), n("lib"), n("app")}},
		{"middle of chain", []string{n("lib")}, []string{n("libc"), n("lib")}},
		{"diamond, ties by name", []string{n("top")}, []string{n("base"), l, rt, n("top")}},
		{"nothing", nil, nil},
		{"duplicates", []string{n("lib"), n("lib"), n("libc")}, []string{n("libc"), n("lib")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Closure(tt.names)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("Closure(%q) = %q, %v; want %q", tt.names, got, err, tt.want)
			}
		})
	}

	// Several roots: the union, dependencies first, independent of input order.
	all := []string{n("tool"), n("app"), n("top"), n("left")}
	got, err := r.Closure(all)
	if err != nil {
		t.Fatalf("Closure(%q) = %v", all, err)
	}
	wantSet := []string{n("tool"), n("app"), n("lib"), n("libc"), n("top"), n("left"), n("right"), n("base")}
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(wantSet))) {
		t.Errorf("Closure(%q) = %q; want the paths %q", all, got, wantSet)
	}
	pos := map[string]int{}
	for i, p := range got {
		pos[p] = i
	}
	for _, p := range got {
		for _, q := range g[p] {
			if q != p && pos[q] > pos[p] {
				t.Errorf("Closure(%q) = %q: %q comes after its referrer %q", all, got, q, p)
			}
		}
	}
	slices.Reverse(all)
	if got2, err := r.Closure(all); err != nil || !slices.Equal(got2, got) {
		t.Errorf("Closure(%q) = %q, %v; want %q (input order must not matter)", all, got2, err, got)
	}

	if got, err := r.Closure([]string{n("app"), nGhost}); !errors.Is(err, registry.ErrNotValid) {
		t.Errorf("Closure(with %q) = %q, %v; want ErrNotValid", nGhost, got, err)
	}
}

func TestLookupHashPart(t *testing.T) {
	r := registrytest.New(t, "disk")
	names := []string{nA, nB, registrytest.HashPart("x") + "-x-1.0", registrytest.HashPart("y") + "-y"}
	registrytest.MustRegister(t, r, registrytest.Reg(info(names[0]), info(names[1]), info(names[2]), info(names[3])))
	for _, name := range names {
		hash := name[:32]
		if got, err := r.LookupHashPart(hash); err != nil || got != name {
			t.Errorf("LookupHashPart(%q) = %q, %v; want %q", hash, got, err, name)
		}
	}
	for _, hash := range []string{
		registrytest.HashPart("ghost"),
		nA[:31],       // a prefix of a valid hash part
		nA[:32] + "0", // longer than a hash part
		"",            //
		nA[1:33],      // shifted
		"00000000000000000000000000000000",
		"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
	} {
		if got, err := r.LookupHashPart(hash); !errors.Is(err, registry.ErrNotValid) {
			t.Errorf("LookupHashPart(%q) = %q, %v; want ErrNotValid", hash, got, err)
		}
	}
}

func TestList(t *testing.T) {
	r := registrytest.New(t, "disk")
	if got := listAll(t, r); len(got) != 0 {
		t.Errorf("List of an empty registry = %q; want nothing", got)
	}
	var want []string
	var batch []*registry.PathInfo
	for i := range 20 {
		p := registrytest.Name(string(rune('a'+i)) + "-pkg")
		want = append(want, p)
		batch = append(batch, info(p))
	}
	registrytest.MustRegister(t, r, registrytest.Reg(batch...))
	slices.Sort(want)
	if got := listAll(t, r); !slices.Equal(got, want) {
		t.Errorf("List(\"\") = %q; want %q", got, want)
	}

	// Paging with `after`: every path exactly once, in order.
	for _, size := range []int{1, 3, 7, 20, 50} {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > len(want)+1 {
				t.Fatalf("paging by %d does not end: %q", size, got)
			}
			var page []string
			err := r.List(after, func(n string) bool {
				page = append(page, n)
				return len(page) < size
			})
			if err != nil {
				t.Fatalf("List(%q) = %v", after, err)
			}
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			after = page[len(page)-1]
		}
		if !slices.Equal(got, want) {
			t.Errorf("List paged by %d = %q; want %q", size, got, want)
		}
	}

	tests := []struct {
		name  string
		after string
		want  []string
	}{
		{"after the first", want[0], want[1:]},
		{"after the last", want[len(want)-1], nil},
		{"after a name between two", want[4] + "x", want[5:]},
		{"after a name before all", "0", want},
		{"after a name beyond all", "zzzz", nil},
		{"after a hash part alone", want[9][:32], want[9:]},
	}
	for _, tt := range tests {
		var got []string
		if err := r.List(tt.after, func(n string) bool { got = append(got, n); return true }); err != nil {
			t.Errorf("%s: List(%q) = %v", tt.name, tt.after, err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: List(%q) = %q; want %q", tt.name, tt.after, got, tt.want)
		}
	}

	// Early stop: fn returning false ends the listing at once.
	calls := 0
	if err := r.List("", func(string) bool { calls++; return false }); err != nil || calls != 1 {
		t.Errorf("List with fn returning false: %d calls, %v; want 1 call, nil", calls, err)
	}
}

func TestIsValidAndGet(t *testing.T) {
	r := registrytest.New(t, "disk")
	registrytest.MustRegister(t, r, registrytest.Reg(info(nA)))
	mustValid(t, r, nA, true)
	for _, name := range []string{nGhost, nA[:32], nA + "x", "", nA[:32] + "-"} {
		mustValid(t, r, name, false)
		pi, err := r.Get(name)
		if !errors.Is(err, registry.ErrNotValid) {
			t.Errorf("Get(%q) = %+v, %v; want ErrNotValid", name, pi, err)
		}
		if pi != nil {
			t.Errorf("Get(%q) = %+v with error; want nil", name, pi)
		}
	}
}

func TestWalk(t *testing.T) {
	r := registrytest.New(t, "disk")
	g := graph(t, r)
	seen := map[string]bool{}
	err := r.Walk(func(pi *registry.PathInfo) error {
		if seen[pi.Path] {
			t.Errorf("Walk visits %q twice", pi.Path)
		}
		seen[pi.Path] = true
		if want := registrytest.Info(pi.Path); pi.NarHash != want.NarHash {
			t.Errorf("Walk: %q has NarHash %x; want %x", pi.Path, pi.NarHash, want.NarHash)
		}
		return nil
	})
	if err != nil || len(seen) != len(g) {
		t.Errorf("Walk = %v after %d paths; want nil after %d", err, len(seen), len(g))
	}
	stop := errors.New("stop")
	calls := 0
	if err := r.Walk(func(*registry.PathInfo) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Walk with fn failing = %v after %d calls; want %v after 1", err, calls, stop)
	}
}

// In blob mode every valid path's tree must be present (an invariant Check
// verifies), so Register must refuse a registration whose tree is incomplete
// or whose records are not what their keys say, as it refuses an invalid
// reference. Today it stores whatever it is given.
func TestRegisterRefusesBadTree(t *testing.T) {
	leaf := &registry.Directory{Entries: []registry.Entry{
		{Name: "f", Node: registry.Node{Type: registry.TypeRegular, Size: 1, Key: digest("f")}},
	}}
	leafRec, leafKey := registry.EncodeDirectory(leaf)
	top := &registry.Directory{Entries: []registry.Entry{
		{Name: "sub", Node: registry.Node{Type: registry.TypeDirectory, Key: leafKey}},
	}}
	topRec, topKey := registry.EncodeDirectory(top)
	dirRoot := registry.Node{Type: registry.TypeDirectory, Key: topKey}
	tests := []struct {
		name string
		root registry.Node
		dirs map[registry.Digest][]byte
	}{
		{"root record missing", dirRoot, nil},
		{"child record missing", dirRoot, map[registry.Digest][]byte{topKey: topRec}},
		{"record under the wrong key", dirRoot, map[registry.Digest][]byte{topKey: leafRec, leafKey: leafRec}},
		{"record that does not decode", dirRoot, map[registry.Digest][]byte{topKey: topRec, leafKey: {1, 1}}},
		{"no root in blob mode", registry.Node{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := registrytest.New(t, "blob")
			pi := info(nA)
			pi.Root = tt.root
			added, err := r.Register([]registry.Registration{{Info: pi, Dirs: tt.dirs}})
			if err == nil {
				t.Errorf("Register(%s) = %q, nil; want an error", tt.name, added)
			}
			mustValid(t, r, nA, false)
		})
	}
}
