package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/storefs/storefs/nar"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/registry"
)

// VerifyOptions configure Verify.
type VerifyOptions struct {
	Contents bool // recompute every item's NAR hash and every blob's key
	// Repair removes registrations whose contents are gone when nothing
	// valid refers to them, and (with Contents) `.links` entries whose
	// content no longer matches their name.
	Repair   bool
	Progress *Progress
}

// VerifyReport lists what Verify found. Problems is empty for a sound store.
type VerifyReport struct {
	Paths     int      `json:"paths"`
	Blobs     int      `json:"blobs,omitempty"`
	Manifests int      `json:"manifests,omitempty"`
	Chunks    int      `json:"chunks,omitempty"`
	Problems  []string `json:"problems"`
	Repaired  []string `json:"repaired,omitempty"`
}

// Verify checks the registry's invariants, that every valid path's contents
// are present and, with Contents, that they hash to the registered NAR hash
// and that every blob's content matches its name.
func (s *Store) Verify(ctx context.Context, o VerifyOptions) (*VerifyReport, error) {
	rep := &VerifyReport{Problems: []string{}}
	var mu sync.Mutex
	problem := func(format string, args ...any) {
		mu.Lock()
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	probs, err := s.reg.Check()
	if err != nil {
		return nil, err
	}
	for _, p := range probs {
		problem("registry: %s", p)
	}
	var infos []*registry.PathInfo
	if err := s.reg.Walk(func(pi *registry.PathInfo) error { infos = append(infos, pi); return nil }); err != nil {
		return nil, err
	}
	rep.Paths = len(infos)

	// Presence.
	type named struct {
		size int64
		item string
	}
	blobsNamed := map[cas.Key]named{}
	users := map[cas.Key][]string{} // the items naming each blob
	gone := map[string]bool{}       // items whose contents are missing
	for _, pi := range infos {
		if s.mode == ModeDisk {
			if _, err := os.Lstat(filepath.Join(s.RealStoreDir(), pi.Path)); err != nil {
				gone[pi.Path] = true
				problem("%s: contents missing: %v", s.FullPath(pi.Path), err)
			}
			continue
		}
		t, err := s.loadTree(pi)
		if err != nil {
			problem("%s: %v", s.FullPath(pi.Path), err)
			continue
		}
		visitBlobs(t, pi.Root, func(k cas.Key, size int64) {
			if _, ok := blobsNamed[k]; !ok {
				blobsNamed[k] = named{size, pi.Path}
			}
			if u := users[k]; len(u) == 0 || u[len(u)-1] != pi.Path {
				users[k] = append(u, pi.Path)
			}
		})
	}
	chunksSeen := map[cas.Key]bool{}
	for k, n := range blobsNamed {
		if s.chunks != nil && chunk.Chunked(n.size) {
			if err := s.verifyManifestPresence(k, n.size, chunksSeen); err != nil {
				for _, item := range users[k] {
					gone[item] = true
				}
				problem("%s: was modified! %v", s.FullPath(n.item), err)
			}
			continue
		}
		st, err := os.Lstat(s.blobs.Path(k))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			for _, item := range users[k] {
				gone[item] = true
			}
			problem("%s: was modified! blob %s is missing", s.FullPath(n.item), k)
		case err != nil:
			return nil, err
		case !st.Mode().IsRegular() || st.Size() != n.size:
			problem("%s: was modified! blob %s has %d bytes, want %d", s.FullPath(n.item), k, st.Size(), n.size)
		}
	}
	if o.Repair && len(gone) > 0 {
		s.repairGone(gone, rep)
	}
	if !o.Contents {
		sortProblems(rep)
		return rep, nil
	}

	// Contents: every item's NAR hash, then every blob's name.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, pi := range infos {
		g.Go(func() error {
			h := sha256.New()
			cw := &countWriter{w: h}
			if err := s.exportNAR(gctx, cw, pi); err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				problem("%s: was modified! cannot read its contents: %v", s.FullPath(pi.Path), err)
				return nil
			}
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			if sum != pi.NarHash {
				problem("%s: was modified! expected hash %s, got %s", s.FullPath(pi.Path), NixHash(pi.NarHash), NixHash(sum))
			} else if cw.n != pi.NarSize {
				problem("%s: NAR size %d, registered %d", s.FullPath(pi.Path), cw.n, pi.NarSize)
			}
			o.Progress.files(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if s.mode.trees() {
		areas := []contentArea{{"blob area", s.blobs, s.blobs.Verify, &rep.Blobs}}
		if s.chunks != nil {
			areas = append(areas,
				contentArea{"manifest area", s.chunks.Manifests, s.verifyManifest, &rep.Manifests},
				contentArea{"chunk area", s.chunks.Chunks, s.chunks.VerifyChunk, &rep.Chunks})
		}
		for _, a := range areas {
			if err := verifyArea(ctx, a.area, a.verify, func() { mu.Lock(); *a.count++; mu.Unlock() }, a.name, problem); err != nil {
				return nil, err
			}
		}
	}
	if s.mode == ModeDisk {
		if err := s.verifyLinks(ctx, o.Repair, rep, problem); err != nil {
			return nil, err
		}
	}
	sortProblems(rep)
	return rep, nil
}

// repairGone removes the registrations of items whose contents are gone and
// that nothing valid (outside the gone set) refers to, as Guix's verify does
// ("path ... disappeared, removing from database"). Their problems go.
func (s *Store) repairGone(gone map[string]bool, rep *VerifyReport) {
	unlock, err := s.lockGC(true)
	if err != nil {
		return
	}
	defer unlock()
	var names []string
	for n := range gone {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		removed, err := s.reg.Invalidate([]string{n})
		if err != nil || len(removed) == 0 {
			continue // still referred to: the problem stays
		}
		rep.Repaired = append(rep.Repaired, fmt.Sprintf("%s: contents gone, removed from the registry", s.FullPath(n)))
		kept := rep.Problems[:0]
		for _, p := range rep.Problems {
			if !strings.HasPrefix(p, s.FullPath(n)+":") {
				kept = append(kept, p)
			}
		}
		rep.Problems = kept
		if s.onChange != nil {
			s.onChange(nil, []string{n})
		}
	}
}

// verifyLinks checks that every `.links` entry's content hashes to its name;
// with repair, a bad entry is unlinked (the items sharing it are reported
// by the NAR-hash check).
func (s *Store) verifyLinks(ctx context.Context, repair bool, rep *VerifyReport, problem func(string, ...any)) error {
	ents, err := os.ReadDir(s.links.Dir())
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, perr := cas.ParseKey(e.Name())
		if perr != nil {
			continue // temp links
		}
		p := filepath.Join(s.links.Dir(), e.Name())
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sum, herr := nar.HashFile(fi.Mode()&0o100 != 0, fi.Size(), f)
		f.Close()
		if herr == nil && cas.Key(sum) == k {
			continue
		}
		if repair && os.Remove(p) == nil {
			rep.Repaired = append(rep.Repaired, fmt.Sprintf("link %s was modified: removed it", p))
			continue
		}
		problem("link %s was modified! its content hashes to %s", p, cas.Key(sum))
	}
	return nil
}

// contentArea is one area of content files Verify checks by name.
type contentArea struct {
	name   string
	area   *cas.Blobs
	verify func(cas.Key) error
	count  *int
}

// verifyArea checks the name of every file in a content area (blobs,
// manifests or chunks) against its content, in parallel.
func verifyArea(ctx context.Context, area *cas.Blobs, verify func(cas.Key) error, count func(), name string, problem func(string, ...any)) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	err := area.Walk(func(k cas.Key, err error) error {
		if err != nil {
			problem("%s: %v", name, err)
			return nil
		}
		count()
		g.Go(func() error {
			if gctx.Err() != nil {
				return gctx.Err()
			}
			if err := verify(k); err != nil && !errors.Is(err, fs.ErrNotExist) {
				problem("%v", err)
			}
			return nil
		})
		return nil
	})
	if werr := g.Wait(); err == nil {
		err = werr
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// verifyManifestPresence checks that a chunked file's manifest is there and
// decodes to its size, and that each of its chunks is there with its size
// (chunks already checked, in seen, are skipped).
func (s *Store) verifyManifestPresence(k cas.Key, size int64, seen map[cas.Key]bool) error {
	refs, err := s.chunks.ReadManifest(k, size)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("manifest %s is missing", k)
	}
	if err != nil {
		return err
	}
	for _, r := range refs {
		if seen[r.Key] {
			continue
		}
		seen[r.Key] = true
		st, err := os.Lstat(s.chunks.Chunks.Path(r.Key))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("chunk %s of %s is missing", r.Key, k)
		case err != nil:
			return err
		case !st.Mode().IsRegular() || st.Size() != int64(r.Size):
			return fmt.Errorf("chunk %s of %s has %d bytes, want %d", r.Key, k, st.Size(), r.Size)
		}
	}
	return nil
}

// verifyManifest checks that the chunks a manifest lists hash, as a file
// with the manifest's executable bit, to the manifest's name.
func (s *Store) verifyManifest(k cas.Key) error {
	p := s.chunks.Manifests.Path(k)
	st, err := os.Lstat(p)
	if err != nil {
		return err
	}
	refs, err := chunk.ReadManifestFile(p, k, -1)
	if err != nil {
		return err
	}
	f := chunk.NewFile(refs, s.chunks.Chunks.Path)
	defer f.Close()
	sum, err := nar.HashFile(st.Mode()&0o100 != 0, f.Size(), f)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", k, err)
	}
	if cas.Key(sum) != k {
		return fmt.Errorf("manifest %s: %w (its chunks hash to %s)", k, cas.ErrKeyMismatch, cas.Key(sum))
	}
	return nil
}

func sortProblems(rep *VerifyReport) { sort.Strings(rep.Problems) }

func visitBlobs(t *tree, n registry.Node, fn func(cas.Key, int64)) {
	switch n.Type {
	case registry.TypeRegular:
		if n.Size > 0 {
			fn(cas.Key(n.Key), n.Size)
		}
	case registry.TypeDirectory:
		if d := t.dirs[n.Key]; d != nil {
			for _, e := range d.Entries {
				visitBlobs(t, e.Node, fn)
			}
		}
	}
}

type countWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
