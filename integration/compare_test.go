package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
)

// compareResult is the part of `storefs compare --json` these tests read.
type compareResult struct {
	Strategy          string `json:"strategy"`
	Estimated         bool   `json:"estimated"`
	Files             int64  `json:"files"`
	LogicalBytes      int64  `json:"logicalBytes"`
	DiskBytes         int64  `json:"diskBytes"`
	FilesStored       int64  `json:"filesStored"`
	FilesDeduplicated int64  `json:"filesDeduplicated"`
	StoredBytes       int64  `json:"storedBytes"`
	DeduplicatedBytes int64  `json:"deduplicatedBytes"`
}

func parseCompare(t *testing.T, out []byte) map[string]compareResult {
	t.Helper()
	var rs []compareResult
	if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatalf("storefs compare --json: %v in %q", err, out)
	}
	m := map[string]compareResult{}
	for _, r := range rs {
		m[r.Strategy] = r
	}
	return m
}

// TestCompareLinks0MatchesNixOptimise: what `storefs compare` reports links-0
// deduplicating (files and bytes) is what `nix-store --optimise` reports
// freeing on the same items in a real Nix store, symlinks aside (Nix 2.8
// links them, storefs never does); and `compare --analyse` of that Nix
// store, after the optimise, estimates the same.
func TestCompareLinks0MatchesNixOptimise(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	r := newRNG(9100)
	shared := [][]byte{r.bytes(1<<20 + 3), r.bytes(300 << 10), r.bytes(8192), r.bytes(8191)}
	srcs := generate(t, tempDir(t), []treeCase{
		{"cmp-a", 9101, nixLinksTree(shared)},
		{"cmp-b", 9102, nixLinksTree(shared)},
		{"bare-big", 9103, func(g gen, p string) { g.file(p, shared[0], false) }},
		{"mixed-1", 1, mixedTree},
	})
	keep := filepath.Join(tempDir(t), "keep")
	out := mustStorefs(t, filepath.Join(tempDir(t), "unused"), append([]string{"compare", "--json", "--strategies", "none,links-0", "--keep", keep}, srcs...)...).stdout
	m := parseCompare(t, out)
	none, l0 := m["none"], m["links-0"]
	paths := linksStorePaths(t, filepath.Join(keep, "links-0"), srcs)
	no := nixOptimise(t, nix, srcs, paths)

	if none.FilesDeduplicated != 0 || none.DeduplicatedBytes != 0 {
		t.Errorf("none deduplicated %d files, %d bytes; want none", none.FilesDeduplicated, none.DeduplicatedBytes)
	}
	if l0.FilesDeduplicated != int64(no.regLinked) || l0.DeduplicatedBytes != no.regBytes {
		t.Errorf("compare: links-0 deduplicated %d files, %d bytes; nix-store --optimise linked %d regular files, freeing %d bytes",
			l0.FilesDeduplicated, l0.DeduplicatedBytes, no.regLinked, no.regBytes)
	}
	if got := fmt.Sprintf("%.2f", float64(l0.DeduplicatedBytes+no.symBytes)/(1<<20)); got != no.miB {
		t.Errorf("compare: links-0 deduplicated %d bytes, with Nix's %d of symlinks %s MiB; Nix printed %s MiB", l0.DeduplicatedBytes, no.symBytes, got, no.miB)
	}
	if l0.DiskBytes >= none.DiskBytes {
		t.Errorf("links-0 takes %d bytes on disk, none %d", l0.DiskBytes, none.DiskBytes)
	}

	// The estimate from the optimised Nix store, read-only: its files are
	// hard links now, which analyse counts per path as compare counts the
	// sources.
	est := parseCompare(t, mustStorefs(t, filepath.Join(tempDir(t), "unused"), "compare", "--analyse", "--json", "--strategies", "none,links-0", no.store).stdout)
	for _, s := range []string{"none", "links-0"} {
		e, b := est[s], m[s]
		if !e.Estimated || e.Files != b.Files || e.LogicalBytes != b.LogicalBytes || e.FilesDeduplicated != b.FilesDeduplicated || e.DeduplicatedBytes != b.DeduplicatedBytes {
			t.Errorf("%s: --analyse of Nix's store estimated %+v; compare built %+v", s, e, b)
		}
	}
}
