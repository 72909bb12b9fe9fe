package registry

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// ErrCycle: a batch's references form a cycle other than self-references.
var ErrCycle = errors.New("reference cycle in registration batch")

// Registration is one path to register with the directory records its tree
// needs (blob mode; encoded by EncodeDirectory, keyed by digest).
type Registration struct {
	Info *PathInfo
	Dirs map[Digest][]byte
}

// Register makes the paths valid in one write transaction. Each reference
// must be valid already, be the path itself, or be registered in the same
// batch; otherwise nothing is registered. A path that is already valid is
// left as it is. It returns the paths newly registered.
//
// The caller must have made the contents durable first.
func (r *Registry) Register(batch []Registration) (added []string, err error) {
	inBatch := map[string]*PathInfo{}
	for _, reg := range batch {
		inBatch[reg.Info.Path] = reg.Info
	}
	if err := checkAcyclic(inBatch); err != nil {
		return nil, err
	}
	for _, reg := range batch {
		if r.mode != "disk" && reg.Info.Root.Type == 0 {
			return nil, fmt.Errorf("register %s: %s-mode path without a tree", reg.Info.Path, r.mode)
		}
		for d, v := range reg.Dirs {
			if sha256.Sum256(v) != d {
				return nil, fmt.Errorf("register %s: directory record %x stored under another digest", reg.Info.Path, d[:8])
			}
			if _, err := DecodeDirectory(v); err != nil {
				return nil, fmt.Errorf("register %s: %w", reg.Info.Path, err)
			}
		}
	}
	err = r.batch(func(tx *bolt.Tx) error {
		added = added[:0]
		paths := tx.Bucket(bucketPaths)
		refs := tx.Bucket(bucketRefs)
		referrers := tx.Bucket(bucketReferrers)
		dirs := tx.Bucket(bucketDirs)
		for _, reg := range batch {
			pi := reg.Info
			name := []byte(pi.Path)
			if paths.Get(name) != nil {
				continue
			}
			for _, ref := range pi.References {
				if ref == pi.Path || inBatch[ref] != nil || paths.Get([]byte(ref)) != nil {
					continue
				}
				return fmt.Errorf("register %s: reference %s: %w", pi.Path, ref, ErrNotValid)
			}
			for d, v := range reg.Dirs {
				if dirs.Get(d[:]) != nil {
					continue
				}
				if err := dirs.Put(d[:], v); err != nil {
					return err
				}
			}
			if pi.Root.Type == TypeDirectory {
				if err := treeComplete(dirs, pi.Root.Key); err != nil {
					return fmt.Errorf("register %s: %w", pi.Path, err)
				}
			}
			if err := paths.Put(name, encodePathInfo(pi)); err != nil {
				return err
			}
			for _, ref := range pi.References {
				if err := refs.Put(refKey(pi.Path, ref), nil); err != nil {
					return err
				}
				if err := referrers.Put(refKey(ref, pi.Path), nil); err != nil {
					return err
				}
			}
			added = append(added, pi.Path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return added, nil
}

// treeComplete checks that every directory record of a tree is stored.
func treeComplete(dirs *bolt.Bucket, root Digest) error {
	seen := map[Digest]bool{}
	var walk func(d Digest) error
	walk = func(d Digest) error {
		if seen[d] {
			return nil
		}
		seen[d] = true
		v := dirs.Get(d[:])
		if v == nil {
			return fmt.Errorf("%x: %w", d[:8], ErrMissingDirectory)
		}
		dir, err := DecodeDirectory(v)
		if err != nil {
			return err
		}
		for _, e := range dir.Entries {
			if e.Type == TypeDirectory {
				if err := walk(e.Key); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(root)
}

func checkAcyclic(batch map[string]*PathInfo) error {
	state := map[string]int{}
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("%w: through %s", ErrCycle, n)
		case 2:
			return nil
		}
		state[n] = 1
		for _, ref := range batch[n].References {
			if ref != n && batch[ref] != nil {
				if err := visit(ref); err != nil {
					return err
				}
			}
		}
		state[n] = 2
		return nil
	}
	for n := range batch {
		if err := visit(n); err != nil {
			return err
		}
	}
	return nil
}

// Problem is one violated invariant found by Check.
type Problem struct {
	Path string
	Msg  string
}

func (p Problem) String() string { return p.Path + ": " + p.Msg }

// Check verifies the registry's invariants and bbolt's own consistency:
// references valid, refs and referrers mirrored, every directory record a
// valid path names present and decodable. It returns the problems found.
func (r *Registry) Check() ([]Problem, error) {
	var probs []Problem
	// bbolt's tx.Check is only safe without concurrent writers: run it in a
	// write transaction (rolled back), which excludes them.
	err := r.with(false, func(db *bolt.DB) error {
		tx, err := db.Begin(true)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		return checkTx(r, tx, &probs)
	})
	slices.SortFunc(probs, func(a, b Problem) int { return bytes.Compare([]byte(a.Path), []byte(b.Path)) })
	return probs, err
}

func checkTx(r *Registry, tx *bolt.Tx, out *[]Problem) error {
	var probs []Problem
	defer func() { *out = probs }()
	for err := range tx.Check() {
		probs = append(probs, Problem{"registry.db", err.Error()})
	}
	paths := tx.Bucket(bucketPaths)
	valid := func(n []byte) bool { return paths.Get(n) != nil }
	mirror := func(b, other *bolt.Bucket, what string) {
		b.ForEach(func(k, _ []byte) error {
			from, to, ok := bytes.Cut(k, []byte{0})
			if !ok {
				probs = append(probs, Problem{string(k), "malformed " + what + " key"})
				return nil
			}
			if !valid(from) {
				probs = append(probs, Problem{string(from), what + " entry for a path that is not valid"})
			}
			if !valid(to) {
				probs = append(probs, Problem{string(from), what + " names " + string(to) + ", which is not valid"})
			}
			if other.Get(refKey(string(to), string(from))) == nil {
				probs = append(probs, Problem{string(from), what + " to " + string(to) + " has no mirror entry"})
			}
			return nil
		})
	}
	mirror(tx.Bucket(bucketRefs), tx.Bucket(bucketReferrers), "reference")
	mirror(tx.Bucket(bucketReferrers), tx.Bucket(bucketRefs), "referrer")
	seen := map[Digest]bool{}
	var walk func(path string, d Digest)
	walk = func(path string, d Digest) {
		if seen[d] {
			return
		}
		seen[d] = true
		if v := tx.Bucket(bucketDirs).Get(d[:]); v != nil && sha256.Sum256(v) != d {
			probs = append(probs, Problem{path, fmt.Sprintf("directory record %x is stored under another digest", d[:8])})
		}
		dir, err := getDirectory(tx, d)
		if err != nil {
			probs = append(probs, Problem{path, err.Error()})
			return
		}
		for _, e := range dir.Entries {
			if e.Type == TypeDirectory {
				walk(path, e.Key)
			}
		}
	}
	return paths.ForEach(func(k, v []byte) error {
		pi, err := decodePathInfo(string(k), v)
		if err != nil {
			probs = append(probs, Problem{string(k), err.Error()})
			return nil
		}
		if r.mode != "disk" {
			switch pi.Root.Type {
			case TypeDirectory:
				walk(pi.Path, pi.Root.Key)
			case 0:
				probs = append(probs, Problem{pi.Path, "no tree recorded"})
			}
		}
		return nil
	})
}

// Walk calls fn for every valid path's PathInfo (references not filled in),
// inside one read transaction.
func (r *Registry) Walk(fn func(*PathInfo) error) error {
	return r.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPaths).ForEach(func(k, v []byte) error {
			pi, err := decodePathInfo(string(k), v)
			if err != nil {
				return err
			}
			return fn(pi)
		})
	})
}
