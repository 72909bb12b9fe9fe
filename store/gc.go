package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/gc"
	"github.com/storefs/storefs/registry"
)

// GCOptions configure CollectGarbage.
type GCOptions struct {
	// DryRun computes what would be deleted and deletes nothing.
	DryRun bool
	// MaxFreed stops the collection once the deleted paths' NAR sizes add
	// up to this many bytes (0: no limit).
	MaxFreed int64
	// RuntimeRoots also keeps paths that running processes have open,
	// mapped, as their executable or as their working directory.
	RuntimeRoots bool
	// Paths, if set, deletes only these paths (and their dead referrers),
	// refusing if any is alive: `storefs delete`.
	Paths []string
}

// GCResult reports a collection.
type GCResult struct {
	Roots   []Root   `json:"roots"`
	Live    []string `json:"live,omitempty"`
	Dead    []string `json:"dead,omitempty"`
	Deleted []string `json:"deleted"`
	// Freed is the bytes removed from disk (files, blobs, .links entries).
	Freed int64 `json:"freed"`
	// LinksRemoved and BlobsRemoved count the pruned .links entries (disk
	// mode) and unnamed blobs (blob mode).
	LinksRemoved int `json:"linksRemoved,omitempty"`
	BlobsRemoved int `json:"blobsRemoved,omitempty"`
	// ManifestsRemoved and ChunksRemoved count what chunk mode pruned.
	ManifestsRemoved int `json:"manifestsRemoved,omitempty"`
	ChunksRemoved    int `json:"chunksRemoved,omitempty"`
}

// ErrAlive: a path asked to be deleted is reachable from a root.
var ErrAlive = errors.New("is still alive")

// tempRootReader reads every process's temp roots, incrementally: each
// refresh reads what was appended since the last.
type tempRootReader struct {
	s       *Store
	offsets map[string]int64
	roots   map[string]bool
}

func (s *Store) newTempRootReader() *tempRootReader {
	return &tempRootReader{s: s, offsets: map[string]int64{}, roots: map[string]bool{}}
}

// refresh reads new temp roots; files of processes that died (no lock held
// on them) are removed and marked stale ("d") for a racing creator.
func (r *tempRootReader) refresh() error {
	ents, err := os.ReadDir(r.s.tempRootDir())
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		p := filepath.Join(r.s.tempRootDir(), e.Name())
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			continue // removed meanwhile
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			r.s.log.Info("removing stale temporary roots file", "file", p)
			os.Remove(p)
			f.Write([]byte("d"))
			f.Close()
			delete(r.offsets, e.Name())
			continue
		}
		off := r.offsets[e.Name()]
		b, err := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
		f.Close()
		if err != nil {
			return err
		}
		if i := strings.LastIndexByte(string(b), 0); i >= 0 {
			for _, name := range strings.Split(string(b[:i]), "\x00") {
				r.roots[name] = true
			}
			r.offsets[e.Name()] = off + int64(i) + 1
		}
	}
	return nil
}

// runtimeRoots are the store paths running processes use: their exe, cwd,
// open files and mappings, under the logical store dir (a mount) or the
// real one (disk mode).
func (s *Store) runtimeRoots() map[string]bool { return s.UsedBy(nil) }

// UsedBy is runtimeRoots for the processes want accepts (all when nil),
// also recognising store paths under the extra prefixes (the store dir as
// a process outside a private mount namespace sees it).
func (s *Store) UsedBy(want func(pid int) bool, extra ...string) map[string]bool {
	out := map[string]bool{}
	prefixes := []string{s.storeDir + "/", s.RealStoreDir() + "/"}
	for _, e := range extra {
		prefixes = append(prefixes, e+"/")
	}
	add := func(p string) {
		for _, pre := range prefixes {
			if rest, ok := strings.CutPrefix(p, pre); ok {
				base, _, _ := strings.Cut(rest, "/")
				if _, _, err := ParseBaseName(base); err == nil {
					out[base] = true
				}
			}
		}
	}
	pids, _ := os.ReadDir("/proc")
	for _, d := range pids {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || want != nil && !want(pid) {
			continue
		}
		dir := filepath.Join("/proc", d.Name())
		for _, l := range []string{"exe", "cwd"} {
			if t, err := os.Readlink(filepath.Join(dir, l)); err == nil {
				add(t)
			}
		}
		if fds, err := os.ReadDir(filepath.Join(dir, "fd")); err == nil {
			for _, fd := range fds {
				if t, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil {
					add(t)
				}
			}
		}
		if maps, err := os.ReadFile(filepath.Join(dir, "maps")); err == nil {
			for _, line := range strings.Split(string(maps), "\n") {
				if i := strings.IndexByte(line, '/'); i >= 0 {
					add(strings.TrimSuffix(line[i:], " (deleted)"))
				}
			}
		}
	}
	return out
}

// liveSet computes the live paths: the closure over references of the
// roots, the temp roots and (optionally) the runtime roots.
func (s *Store) liveSet(g map[string][]string, roots []Root, temp map[string]bool, runtime map[string]bool) map[string]bool {
	var start []string
	for _, r := range roots {
		start = append(start, filepath.Base(r.Path))
	}
	for b := range temp {
		start = append(start, b)
	}
	for b := range runtime {
		start = append(start, b)
	}
	return gc.Live(start, func(n string) ([]string, bool) { refs, ok := g[n]; return refs, ok })
}

// CollectGarbage deletes the valid paths no root, temp root or (with
// RuntimeRoots) running process keeps alive, referrers before their
// references, each invalidated in the registry before its files go; then
// it prunes `.links` entries nothing uses any more (disk mode) or blobs no
// valid tree names (blob mode).
//
// Locking (reference: temp roots): the exclusive gc.lock is held while the
// roots and temp roots are read and during each path's deletion and the
// final sweep, never for the whole run. Adders temp-root a path and check
// its validity under the shared lock, so before deleting a path the
// collector re-reads the temp roots (and the roots, if they changed) and
// spares it if someone took it meanwhile; an adder that comes after finds it
// invalid and adds it again.
func (s *Store) CollectGarbage(ctx context.Context, o GCOptions) (*GCResult, error) {
	res := &GCResult{Deleted: []string{}}
	start := time.Now()
	unlock, err := s.lockGC(true)
	if err != nil {
		return nil, err
	}
	roots, err := s.Roots()
	if err != nil {
		unlock()
		return nil, err
	}
	stamp := s.rootsStamp()
	temp := s.newTempRootReader()
	if err := temp.refresh(); err != nil {
		unlock()
		return nil, err
	}
	var runtime map[string]bool
	if o.RuntimeRoots {
		runtime = s.runtimeRoots()
	}
	g, err := s.reg.Graph()
	if err != nil {
		unlock()
		return nil, err
	}
	live := s.liveSet(g, roots, temp.roots, runtime)
	unlock()
	s.log.Debug("gc: roots read", "roots", len(roots), "valid", len(g), "live", len(live), "elapsed", time.Since(start))

	for _, r := range roots {
		if _, ok := g[filepath.Base(r.Path)]; ok {
			res.Roots = append(res.Roots, r)
		} else {
			s.log.Info("skipping invalid root", "link", r.Link, "path", r.Path)
		}
	}
	for n := range g {
		if live[n] {
			res.Live = append(res.Live, s.FullPath(n))
		}
	}
	sort.Strings(res.Live)

	var targets []string
	if o.Paths != nil {
		set := map[string]bool{}
		for _, p := range o.Paths {
			base, rel, err := SplitStorePath(s.storeDir, p)
			if err != nil {
				return nil, err
			}
			if rel != "" {
				return nil, fmt.Errorf("%s: not a store path", p)
			}
			if _, ok := g[base]; !ok {
				return nil, fmt.Errorf("%s: %w", s.FullPath(base), ErrNotValid)
			}
			if live[base] {
				return nil, fmt.Errorf("cannot delete path '%s' since it %w", s.FullPath(base), ErrAlive)
			}
			set[base] = true
		}
		// Like nix-store --delete: a path that a valid path outside the
		// set still refers to is refused too.
		for _, n := range gc.WithReferrers(set, g) {
			if !set[n] {
				for _, ref := range g[n] {
					if set[ref] && ref != n {
						return nil, fmt.Errorf("cannot delete path '%s' since it %w (referred to by '%s')", s.FullPath(ref), ErrAlive, s.FullPath(n))
					}
				}
			}
		}
		targets = gc.WithReferrers(set, g)
	} else {
		targets = gc.Dead(g, live)
	}
	for _, n := range targets {
		res.Dead = append(res.Dead, s.FullPath(n))
	}
	if o.DryRun {
		if o.Paths == nil {
			invalid, err := s.invalidEntries(temp)
			if err != nil {
				return nil, err
			}
			for _, n := range invalid {
				res.Dead = append(res.Dead, s.FullPath(n))
			}
		}
		return res, nil
	}

	var sizes map[string]int64 // NAR sizes, for --max-freed
	if o.MaxFreed > 0 {
		sizes = map[string]int64{}
		if err := s.reg.Walk(func(pi *registry.PathInfo) error { sizes[pi.Path] = pi.NarSize; return nil }); err != nil {
			return res, err
		}
	}
	var sum int64
	var tr trash
	defer func() {
		freed, err := tr.empty()
		res.Freed += freed
		if err != nil {
			s.log.Warn("gc: emptying the trash", "err", err)
		}
	}()
	for len(targets) > 0 {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		// One critical section per chunk of paths: one registry
		// transaction, and adders wait only for that long.
		n := min(len(targets), gcChunk)
		if o.MaxFreed > 0 {
			n = 0
			for est := sum; n < len(targets) && n < gcChunk && est < o.MaxFreed; n++ {
				est += sizes[targets[n]]
			}
			if n == 0 {
				s.log.Info("deleted enough; stopping", "maxFreed", o.MaxFreed)
				break
			}
		}
		chunk := targets[:n]
		targets = targets[n:]
		deleted, freed, err := s.deleteDead(chunk, temp, &stamp, g, runtime, live, &tr)
		for _, d := range deleted {
			res.Deleted = append(res.Deleted, s.FullPath(d))
			sum += sizes[d]
		}
		res.Freed += freed
		if err != nil {
			return res, err
		}
	}
	freed, err := tr.empty()
	tr = trash{}
	res.Freed += freed
	if err != nil {
		return res, err
	}
	s.log.Debug("gc: paths deleted", "n", len(res.Deleted), "elapsed", time.Since(start))
	if err := s.sweepInvalid(temp, res); err != nil {
		return res, err
	}
	s.log.Debug("gc: invalid entries swept", "elapsed", time.Since(start))
	if err := s.sweepContent(res); err != nil {
		return res, err
	}
	s.log.Debug("gc: content swept", "links", res.LinksRemoved, "blobs", res.BlobsRemoved, "elapsed", time.Since(start))
	// staging dirs nobody holds: a trash this or an earlier collection could
	// not empty, leftovers of dead processes (a daemon opens the store once)
	unlock, err = s.lockTmp()
	if err != nil {
		return res, err
	}
	err = s.cleanTmp()
	unlock()
	return res, err
}

// isRoot: permission bits do not stop this process (CAP_DAC_OVERRIDE).
var isRoot = os.Geteuid() == 0

// trash holds the directories of deleted paths (disk mode), moved out of
// the store into a staging dir of the collector's own (no other process's
// clean-up takes it). It is emptied once, after every invalidation: the
// registry's commits then do not wait on the journal for the deletions.
type trash struct {
	stage *stage
	paths []string
}

// empty deletes the trash and returns the bytes freed.
func (tr *trash) empty() (int64, error) {
	if tr.stage == nil {
		return 0, nil
	}
	defer tr.stage.remove()
	return deleteTrees(tr.paths)
}

// deleters is how many trees deleteTrees deletes at once. Deleting is bound
// by the device, not the CPUs (freeing blocks waits for discards where the
// filesystem is mounted with them; cold directory and inode blocks are
// read), so more run than there are cores.
const deleters = 16

// deleteTrees deletes paths in parallel and returns the bytes freed.
func deleteTrees(paths []string) (int64, error) {
	d := &treeDeleter{sem: make(chan struct{}, deleters)}
	var wg sync.WaitGroup
	for _, p := range paths {
		d.sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-d.sem }()
			d.note(d.tree(p))
		})
	}
	wg.Wait()
	return d.freed.Load(), d.err
}

// inPlaceMax: a dead item of at most this NAR size is deleted in place while
// its chunk's lock is held (a few system calls), as long as the chunk's
// items deleted in place stay within inPlaceBudget; the others are moved to
// the trash and deleted once the lock is released, so adders never wait for
// a large deletion.
const (
	inPlaceMax    = 1 << 20
	inPlaceBudget = 8 << 20
)

// gcChunk is how many dead paths one critical section handles.
const gcChunk = 256

// deleteDead deletes a chunk of dead paths (referrers first) in one
// critical section: it re-reads the temp roots and, if they changed, the
// roots (recomputing live, the collection's live set), invalidates in one
// transaction the paths still dead and not referred to by anything kept,
// and in disk mode deletes their files: small items at once, under the
// lock; large ones are moved out of the store into tr (deleted later,
// outside the lock: an adder may make the same path again at once).
func (s *Store) deleteDead(chunk []string, temp *tempRootReader, stamp *string, g map[string][]string, runtime map[string]bool, live map[string]bool, tr *trash) (deleted []string, freed int64, err error) {
	unlock, err := s.lockGC(true)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	if err := temp.refresh(); err != nil {
		return nil, 0, err
	}
	if st := s.rootsStamp(); st != *stamp {
		*stamp = st
		roots, err := s.Roots()
		if err != nil {
			return nil, 0, err
		}
		for k, v := range s.liveSet(g, roots, temp.roots, runtime) {
			live[k] = v
		}
	}
	var dead []string
	for _, n := range chunk {
		if !temp.roots[n] && !live[n] { // else taken or rooted meanwhile
			dead = append(dead, n)
		}
	}
	removed, err := s.reg.InvalidateOrdered(dead)
	if err != nil {
		return nil, 0, err
	}
	deleted = make([]string, len(removed))
	for i, r := range removed {
		deleted[i] = r.Name
	}
	if len(deleted) > 0 && s.onChange != nil {
		s.onChange(nil, deleted)
	}
	if s.mode != ModeDisk {
		return deleted, 0, nil
	}
	var inPlace, large []string
	var budget int64 = inPlaceBudget
	for _, r := range removed {
		if r.NarSize <= inPlaceMax && r.NarSize <= budget {
			budget -= r.NarSize
			inPlace = append(inPlace, r.Name)
		} else {
			large = append(large, r.Name)
		}
	}
	for i, n := range inPlace {
		inPlace[i] = filepath.Join(s.RealStoreDir(), n)
	}
	freed, err = deleteTrees(inPlace)
	if err != nil {
		return deleted, freed, err
	}
	for _, n := range large {
		if tr.stage == nil {
			if tr.stage, err = s.newStage(); err != nil {
				return deleted, freed, err
			}
		}
		p, t := filepath.Join(s.RealStoreDir(), n), filepath.Join(tr.stage.dir, n)
		if !isRoot {
			if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
				os.Chmod(p, 0o755) // moving a directory to another parent needs write access to it
			}
		}
		if err := os.Rename(p, t); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return deleted, freed, err
		}
		tr.paths = append(tr.paths, t)
	}
	return deleted, freed, nil
}

// invalidEntries lists the store directory's entries (disk mode) that are
// neither valid nor temp-rooted: what sweepInvalid would delete.
func (s *Store) invalidEntries(temp *tempRootReader) ([]string, error) {
	if s.mode != ModeDisk {
		return nil, nil
	}
	ents, err := os.ReadDir(s.RealStoreDir())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, _, err := ParseBaseName(e.Name()); err != nil {
			continue
		}
		if ok, err := s.reg.IsValid(e.Name()); err != nil {
			return nil, err
		} else if !ok && !temp.roots[e.Name()] {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// sweepInvalid removes entries of the store directory (disk mode) that are
// not valid and not temp-rooted: leftovers of adds that died between their
// rename and their registration. `.links` is never touched.
func (s *Store) sweepInvalid(temp *tempRootReader, res *GCResult) error {
	if s.mode != ModeDisk {
		return nil
	}
	ents, err := os.ReadDir(s.RealStoreDir())
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if name == ".links" || strings.HasPrefix(name, ".") {
			continue
		}
		if _, _, err := ParseBaseName(name); err != nil {
			continue
		}
		unlock, err := s.lockGC(true)
		if err != nil {
			return err
		}
		err = temp.refresh()
		valid, verr := s.reg.IsValid(name)
		if err == nil && verr == nil && !valid && !temp.roots[name] {
			s.log.Info("deleting invalid store entry", "path", name)
			var freed int64
			freed, err = deleteTree(filepath.Join(s.RealStoreDir(), name))
			res.Freed += freed
		}
		unlock()
		if err == nil {
			err = verr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sweepContent prunes `.links` entries left with one link (disk mode) or
// blobs no valid tree names (blob mode), under the exclusive lock.
func (s *Store) sweepContent(res *GCResult) error {
	unlock, err := s.lockGC(true)
	if err != nil {
		return err
	}
	defer unlock()
	if s.mode == ModeDisk {
		f, err := os.Open(s.links.Dir())
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		for i, n := range names {
			names[i] = filepath.Join(s.links.Dir(), n)
		}
		n, freed := removeFiles(names, func(p string, st *unix.Stat_t) bool {
			n := filepath.Base(p)
			return st.Nlink == 1 || strings.HasPrefix(n, cas.TempLinkPrefix) && !tempLinkOwnerAlive(n)
		})
		res.LinksRemoved += n
		res.Freed += freed
		return nil
	}
	named := map[cas.Key]bool{}
	if _, err := s.reg.SweepDirs(func(k registry.Digest) { named[cas.Key(k)] = true }); err != nil {
		return err
	}
	if s.inUse != nil { // files a mount has open keep their content
		for _, k := range s.inUse() {
			named[k] = true
		}
	}
	var unnamed []string
	err = s.blobs.Walk(func(k cas.Key, err error) error {
		if err == nil && !named[k] {
			unnamed = append(unnamed, s.blobs.Path(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	n, freed := removeFiles(unnamed, func(string, *unix.Stat_t) bool { return true })
	res.BlobsRemoved += n
	res.Freed += freed
	if s.chunks != nil {
		return s.sweepChunks(named, res)
	}
	return nil
}

// sweepChunks (chunk mode, under the exclusive lock) removes the manifests
// no valid tree names, then the chunks no remaining manifest lists.
func (s *Store) sweepChunks(named map[cas.Key]bool, res *GCResult) error {
	var unnamed []string
	var kept []cas.Key
	err := s.chunks.Manifests.Walk(func(k cas.Key, err error) error {
		switch {
		case err != nil:
		case named[k]:
			kept = append(kept, k)
		default:
			unnamed = append(unnamed, s.chunks.Manifests.Path(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	n, freed := removeFiles(unnamed, func(string, *unix.Stat_t) bool { return true })
	res.ManifestsRemoved += n
	res.Freed += freed
	// A manifest that cannot be read keeps the collection from deciding
	// which chunks are unused: it fails rather than guess.
	used := map[cas.Key]bool{}
	for _, k := range kept {
		refs, err := chunk.ReadManifestFile(s.chunks.Manifests.Path(k), k, -1)
		if err != nil {
			return fmt.Errorf("gc: chunk sweep: %w", err)
		}
		for _, r := range refs {
			used[r.Key] = true
		}
	}
	unnamed = unnamed[:0]
	err = s.chunks.Chunks.Walk(func(k cas.Key, err error) error {
		if err == nil && !used[k] {
			unnamed = append(unnamed, s.chunks.Chunks.Path(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	n, freed = removeFiles(unnamed, func(string, *unix.Stat_t) bool { return true })
	res.ChunksRemoved += n
	res.Freed += freed
	return nil
}

// removeFiles unlinks the paths whose lstat want approves, in batches on
// `deleters` goroutines (each removal may wait for the device), and returns
// how many went and their bytes. A path removed by someone else meanwhile
// is skipped (nix#4957).
func removeFiles(paths []string, want func(string, *unix.Stat_t) bool) (int, int64) {
	var removed, freed atomic.Int64
	sem := make(chan struct{}, deleters)
	var wg sync.WaitGroup
	for len(paths) > 0 {
		batch := paths[:min(len(paths), fileBatch)]
		paths = paths[len(batch):]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for _, p := range batch {
				var st unix.Stat_t
				if unix.Lstat(p, &st) == nil && want(p, &st) && unix.Unlink(p) == nil {
					removed.Add(1)
					freed.Add(st.Size)
				}
			}
		})
	}
	wg.Wait()
	return int(removed.Load()), freed.Load()
}

// tempLinkOwnerAlive reads the pid in ".tmp-link-<pid>-<n>".
func tempLinkOwnerAlive(name string) bool {
	rest := strings.TrimPrefix(name, cas.TempLinkPrefix)
	pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
	if err != nil {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// deleteTree removes an item's files (see treeDeleter) and returns the
// bytes freed.
func deleteTree(p string) (int64, error) { return deleteTrees([]string{p}) }

// fileBatch is how many files of one directory a goroutine unlinks.
const fileBatch = 64

// A treeDeleter removes trees with at most cap(sem) goroutines in all: a
// subdirectory, or a batch of a large directory's files, gets a goroutine
// of its own while one is free and is done inline otherwise, so one large
// item is deleted as much in parallel as many small ones. Directories are
// made writable first (they are 0555) and read through descriptors. It
// counts the bytes of the files whose last link went; a file still linked
// from `.links` is counted when the sweep prunes its entry.
type treeDeleter struct {
	sem   chan struct{}
	freed atomic.Int64
	mu    sync.Mutex
	err   error // the first
}

func (d *treeDeleter) note(err error) {
	if err != nil {
		d.mu.Lock()
		if d.err == nil {
			d.err = err
		}
		d.mu.Unlock()
	}
}

// maybeGo runs fn on a goroutine of its own if one is free, else now.
func (d *treeDeleter) maybeGo(wg *sync.WaitGroup, fn func() error) {
	select {
	case d.sem <- struct{}{}:
		wg.Go(func() {
			defer func() { <-d.sem }()
			d.note(fn())
		})
	default:
		d.note(fn())
	}
}

func (d *treeDeleter) tree(p string) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlink(p); err != nil {
			if err == unix.ENOENT {
				return nil
			}
			return &os.PathError{Op: "unlink", Path: p, Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 {
			d.freed.Add(st.Size)
		}
		return nil
	}
	if err := d.contents(unix.AT_FDCWD, p, p); err != nil {
		return err
	}
	if err := unix.Rmdir(p); err != nil {
		return &os.PathError{Op: "rmdir", Path: p, Err: err}
	}
	return nil
}

// contents empties the directory name (relative to dirfd), whose full path
// (for errors) is path.
func (d *treeDeleter) contents(dirfd int, name, path string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	dir := os.NewFile(uintptr(fd), path) // owns fd from here
	defer dir.Close()
	if !isRoot { // root may unlink in a 0555 directory; others must make it writable
		unix.Fchmod(fd, 0o755)
	}
	ents, err := dir.ReadDir(-1) // types from the directory itself: no lstat
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait() // before the descriptor closes: the goroutines use it
	var files []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() {
			d.maybeGo(&wg, func() error {
				sub := filepath.Join(path, n)
				if err := d.contents(fd, n, sub); err != nil {
					return err
				}
				if err := unix.Unlinkat(fd, n, unix.AT_REMOVEDIR); err != nil {
					return &os.PathError{Op: "rmdir", Path: sub, Err: err}
				}
				return nil
			})
			continue
		}
		files = append(files, n)
	}
	for len(files) > 0 {
		batch := files[:min(len(files), fileBatch)]
		files = files[len(batch):]
		d.maybeGo(&wg, func() error { return d.unlinkFiles(fd, path, batch) })
	}
	return nil
}

// unlinkFiles removes names (not directories) from the directory dirfd,
// whose full path (for errors) is path.
func (d *treeDeleter) unlinkFiles(dirfd int, path string, names []string) error {
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if err := unix.Unlinkat(dirfd, n, 0); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return &os.PathError{Op: "unlink", Path: filepath.Join(path, n), Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 {
			d.freed.Add(st.Size)
		}
	}
	return nil
}
