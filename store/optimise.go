package store

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"

	"github.com/storefs/storefs/cas"
)

// ErrWrongMode: the operation exists only in the other mode.
var ErrWrongMode = errors.New("not available in this store's mode")

// Optimise deduplicates every valid item of a disk-mode store through
// `.links`, as `nix-store --optimise` does: it works from the list of valid
// paths (each temp-rooted first, and skipped if it stopped being valid),
// skips inodes already linked to an entry, and hashes on all cores. It never
// holds the registry open while it works, so several optimisers and a
// collector may run at once. Failures on single files are counted.
func (s *Store) Optimise(ctx context.Context) (cas.DedupStats, error) {
	if s.mode != ModeDisk {
		return cas.DedupStats{}, errors.New("optimise: blob mode stores each distinct file once already: " + ErrWrongMode.Error())
	}
	var bases []string
	if err := s.reg.List("", func(n string) bool { bases = append(bases, n); return true }); err != nil {
		return cas.DedupStats{}, err
	}
	for _, b := range bases {
		if err := s.addTempRoot(ctx, b); err != nil {
			return cas.DedupStats{}, err
		}
	}
	valid := map[string]bool{}
	if err := s.reg.List("", func(n string) bool { valid[n] = true; return true }); err != nil {
		return cas.DedupStats{}, err
	}
	var roots []string
	for _, b := range bases {
		if valid[b] {
			roots = append(roots, filepath.Join(s.RealStoreDir(), b))
		}
	}
	inodes, err := s.links.Inodes()
	if err != nil {
		return cas.DedupStats{}, err
	}
	return s.links.DedupTrees(ctx, roots, cas.DedupOptions{
		MinSize: s.linksMin,
		Workers: max(4, 2*runtime.GOMAXPROCS(0)),
		Inodes:  cas.NewInodeSet(inodes),
	})
}
