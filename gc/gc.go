// Package gc decides liveness for garbage collection: which valid paths
// the roots keep alive through references, and the order in which dead
// paths are deleted (referrers before their references, so the registry's
// invariant holds after every single deletion). It works on plain names and
// a reference function, so it is tested without a store.
package gc

import "sort"

// Live returns the closure of start over refs (start included). refs
// reports a path's references and whether the path is valid; invalid paths
// (temp roots of paths still being added) are live but have no references.
func Live(start []string, refs func(string) ([]string, bool)) map[string]bool {
	live := map[string]bool{}
	stack := append([]string(nil), start...)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if live[n] {
			continue
		}
		live[n] = true
		rs, _ := refs(n)
		for _, r := range rs {
			if !live[r] {
				stack = append(stack, r)
			}
		}
	}
	return live
}

// Dead returns the valid paths of g (path -> references) that are not live,
// ordered referrers first.
func Dead(g map[string][]string, live map[string]bool) []string {
	set := map[string]bool{}
	for n := range g {
		if !live[n] {
			set[n] = true
		}
	}
	return order(set, g)
}

// WithReferrers returns set plus every path of g that refers to a member,
// transitively, ordered referrers first.
func WithReferrers(set map[string]bool, g map[string][]string) []string {
	by := map[string][]string{}
	for n, refs := range g {
		for _, r := range refs {
			by[r] = append(by[r], n)
		}
	}
	all := map[string]bool{}
	var add func(n string)
	add = func(n string) {
		if all[n] {
			return
		}
		all[n] = true
		for _, m := range by[n] {
			add(m)
		}
	}
	for n := range set {
		add(n)
	}
	return order(all, g)
}

// order sorts set so that every path comes before its references (within
// the set); ties are broken by name.
func order(set map[string]bool, g map[string][]string) []string {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	// depth-first post-order over references gives references first; reverse it
	done := map[string]bool{}
	var post []string
	var visit func(n string)
	visit = func(n string) {
		if done[n] {
			return
		}
		done[n] = true
		for _, r := range g[n] {
			if set[r] && r != n {
				visit(r)
			}
		}
		post = append(post, n)
	}
	for _, n := range names {
		visit(n)
	}
	for i, j := 0, len(post)-1; i < j; i, j = i+1, j-1 {
		post[i], post[j] = post[j], post[i]
	}
	return post
}
