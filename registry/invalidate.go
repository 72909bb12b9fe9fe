package registry

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// ErrInUse: a path to invalidate still has valid referrers outside the set.
var ErrInUse = errors.New("path is still referenced")

// Invalidate makes the paths invalid in one write transaction: their
// PathInfo, references and the mirror entries go. A path that another valid
// path (outside names) refers to is refused with ErrInUse and nothing
// changes. Paths already invalid are ignored. It returns the paths removed.
// Directory records are left for SweepDirs.
func (r *Registry) Invalidate(names []string) (removed []string, err error) {
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	err = r.update(func(tx *bolt.Tx) error {
		removed = removed[:0]
		paths := tx.Bucket(bucketPaths)
		referrers := tx.Bucket(bucketReferrers)
		for _, n := range names {
			if paths.Get([]byte(n)) == nil {
				continue
			}
			for _, by := range scanPrefix(referrers, n) {
				if by != n && !set[by] {
					return fmt.Errorf("%s: %w by %s", n, ErrInUse, by)
				}
			}
		}
		for _, n := range names {
			if paths.Get([]byte(n)) == nil {
				continue
			}
			if err := removePath(tx, n); err != nil {
				return err
			}
			removed = append(removed, n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return removed, nil
}

// removePath deletes n's PathInfo and every reference from or to it, with
// their mirror entries.
func removePath(tx *bolt.Tx, n string) error {
	refs := tx.Bucket(bucketRefs)
	referrers := tx.Bucket(bucketReferrers)
	for _, to := range scanPrefix(refs, n) {
		if err := refs.Delete(refKey(n, to)); err != nil {
			return err
		}
		if err := referrers.Delete(refKey(to, n)); err != nil {
			return err
		}
	}
	for _, by := range scanPrefix(referrers, n) {
		if err := referrers.Delete(refKey(n, by)); err != nil {
			return err
		}
		if err := refs.Delete(refKey(by, n)); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketPaths).Delete([]byte(n))
}

// Graph returns every valid path with its references, from one snapshot.
func (r *Registry) Graph() (map[string][]string, error) {
	g := map[string][]string{}
	err := r.view(func(tx *bolt.Tx) error {
		refs := tx.Bucket(bucketRefs)
		return tx.Bucket(bucketPaths).ForEach(func(k, _ []byte) error {
			g[string(k)] = scanPrefix(refs, string(k))
			return nil
		})
	})
	return g, err
}

// SweepDirs deletes the directory records no valid path's tree names, and
// calls keep for every blob key a valid path's tree names (so a caller can
// sweep the blob area from the same snapshot). It returns the number of
// records deleted.
func (r *Registry) SweepDirs(keep func(key Digest)) (int, error) {
	n := 0
	err := r.update(func(tx *bolt.Tx) error {
		n = 0
		dirs := tx.Bucket(bucketDirs)
		live := map[Digest]bool{}
		var walk func(d Digest) error
		walk = func(d Digest) error {
			if live[d] {
				return nil
			}
			live[d] = true
			dir, err := getDirectory(tx, d)
			if err != nil {
				return err
			}
			for _, e := range dir.Entries {
				switch e.Type {
				case TypeDirectory:
					if err := walk(e.Key); err != nil {
						return err
					}
				case TypeRegular:
					if keep != nil && e.Size > 0 {
						keep(e.Key)
					}
				}
			}
			return nil
		}
		err := tx.Bucket(bucketPaths).ForEach(func(k, v []byte) error {
			pi, err := decodePathInfo(string(k), v)
			if err != nil {
				return err
			}
			switch pi.Root.Type {
			case TypeDirectory:
				return walk(pi.Root.Key)
			case TypeRegular:
				if keep != nil && pi.Root.Size > 0 {
					keep(pi.Root.Key)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		var dead [][]byte
		dirs.ForEach(func(k, _ []byte) error {
			var d Digest
			copy(d[:], k)
			if !live[d] {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range dead {
			if err := dirs.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	return n, err
}

// Removed is a path InvalidateOrdered removed.
type Removed struct {
	Name    string
	NarSize int64
}

// InvalidateOrdered invalidates as many of names as it can in one write
// transaction. names must come referrers first: a path is removed when each
// of its referrers is itself or was removed before it in this call; a path
// another valid path still refers to (say, one registered since the caller
// decided) is kept. It returns the paths removed, in order, with their NAR
// sizes.
func (r *Registry) InvalidateOrdered(names []string) (removed []Removed, err error) {
	err = r.update(func(tx *bolt.Tx) error {
		removed = removed[:0]
		gone := map[string]bool{}
		paths := tx.Bucket(bucketPaths)
		referrers := tx.Bucket(bucketReferrers)
	next:
		for _, n := range names {
			v := paths.Get([]byte(n))
			if v == nil {
				continue
			}
			size, err := narSizeOf(n, v)
			if err != nil {
				return err
			}
			by := scanPrefix(referrers, n)
			for _, b := range by {
				if b != n && !gone[b] {
					continue next
				}
			}
			if err := removePath(tx, n); err != nil {
				return err
			}
			gone[n] = true
			removed = append(removed, Removed{Name: n, NarSize: size})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return removed, nil
}
