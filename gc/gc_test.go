package gc

import (
	"slices"
	"testing"
)

func graph() map[string][]string {
	// root -> a -> b -> c ; root -> d -> b ; e -> c ; f (alone) ; s -> s (self)
	return map[string][]string{
		"root": {"a", "d"},
		"a":    {"b"},
		"d":    {"b"},
		"b":    {"c"},
		"c":    nil,
		"e":    {"c"},
		"f":    nil,
		"s":    {"s"},
	}
}

func refs(g map[string][]string) func(string) ([]string, bool) {
	return func(n string) ([]string, bool) { r, ok := g[n]; return r, ok }
}

func TestLive(t *testing.T) {
	g := graph()
	live := Live([]string{"root", "pending"}, refs(g))
	for _, n := range []string{"root", "a", "b", "c", "d", "pending"} {
		if !live[n] {
			t.Errorf("%s not live", n)
		}
	}
	for _, n := range []string{"e", "f", "s"} {
		if live[n] {
			t.Errorf("%s live; want dead", n)
		}
	}
}

// Dead paths come referrers first: deleting them in order never leaves a
// valid path with a missing reference.
func TestDeadOrder(t *testing.T) {
	g := graph()
	g["x"] = []string{"e", "f"}
	g["y"] = []string{"x"}
	live := Live([]string{"root"}, refs(g))
	dead := Dead(g, live)
	if want := []string{"e", "f", "s", "x", "y"}; !slices.Equal(sorted(dead), want) {
		t.Fatalf("Dead = %v; want the set %v", dead, want)
	}
	checkReferrersFirst(t, dead, g)
}

func TestWithReferrers(t *testing.T) {
	g := graph()
	g["x"] = []string{"c"}
	got := WithReferrers(map[string]bool{"b": true}, g)
	if want := []string{"a", "b", "d", "root"}; !slices.Equal(sorted(got), want) {
		t.Errorf("WithReferrers(b) = %v; want the set %v", got, want)
	}
	checkReferrersFirst(t, got, g)
}

func checkReferrersFirst(t *testing.T, order []string, g map[string][]string) {
	t.Helper()
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	for _, n := range order {
		for _, r := range g[n] {
			if p, ok := pos[r]; ok && r != n && p < pos[n] {
				t.Errorf("%s (a reference of %s) comes before it in %v", r, n, order)
			}
		}
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
