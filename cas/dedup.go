package cas

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/nar"
)

// DedupOptions configure DedupTree.
type DedupOptions struct {
	MinSize int64 // files smaller than this are never linked
	Workers int   // parallel hashers; 1 processes files in walk order
	// Inodes, if set, holds inodes already linked to an entry (Nix's
	// inodeHash); they are skipped without hashing, and inodes linked by
	// this run are added. Shared between calls; DedupTree locks it.
	Inodes *InodeSet
}

// InodeSet is a concurrency-safe set of inode numbers.
type InodeSet struct {
	mu sync.Mutex
	m  map[uint64]bool
}

// NewInodeSet wraps m (which may be nil).
func NewInodeSet(m map[uint64]bool) *InodeSet {
	if m == nil {
		m = map[uint64]bool{}
	}
	return &InodeSet{m: m}
}

func (s *InodeSet) has(ino uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[ino]
}

func (s *InodeSet) add(ino uint64) {
	s.mu.Lock()
	s.m[ino] = true
	s.mu.Unlock()
}

// DedupStats count what a deduplication did. Errors are failures that were
// counted and skipped: deduplication never fails the operation it serves.
type DedupStats struct {
	Files      int   `json:"filesConsidered"`
	Linked     int   `json:"filesLinked"`
	BytesFreed int64 `json:"bytesFreed"`
	Canonical  int   `json:"newEntries"`
	Already    int   `json:"alreadyLinked"`
	Skipped    int   `json:"skipped"`
	Writable   int   `json:"writableSkipped"`
	Errors     int   `json:"errors"`
}

// Add accumulates o into s.
func (s *DedupStats) Add(o DedupStats) {
	s.Files += o.Files
	s.Linked += o.Linked
	s.BytesFreed += o.BytesFreed
	s.Canonical += o.Canonical
	s.Already += o.Already
	s.Skipped += o.Skipped
	s.Writable += o.Writable
	s.Errors += o.Errors
}

// Count records one Canonicalize result.
func (s *DedupStats) Count(r Result, err error) {
	s.Files++
	switch {
	case err != nil:
		s.Errors++
	case r.Outcome == Linked:
		s.Linked++
		s.BytesFreed += r.Size
	case r.Outcome == Canonical:
		s.Canonical++
	case r.Outcome == Already:
		s.Already++
	default:
		s.Skipped++
	}
}

type dedupFile struct {
	path string
	exec bool
	size int64
}

// DedupTree deduplicates every regular file of at least MinSize bytes under
// root (a store item, or the whole store: `.links` itself is skipped),
// walking in sorted order. Symlinks and directories are never linked;
// writable files are skipped with a warning (only immutable, registered
// content may be linked). Errors on single files are logged and counted;
// only a cancelled ctx stops the walk.
func (l *Links) DedupTree(ctx context.Context, root string, o DedupOptions) (DedupStats, error) {
	return l.DedupTrees(ctx, []string{root}, o)
}

// maxGroup bounds the files of one directory handled as a unit: their
// descriptors stay open until the unit is linked.
const maxGroup = 256

// groupSize is maxGroup, or less where the descriptor limit is low: at most
// 2*workers+releasers groups are open at once, and they may use half the
// limit.
func groupSize(workers int) int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<20 {
		return maxGroup
	}
	return min(maxGroup, max(1, int(lim.Cur/2)/(2*workers+releasers)))
}

// releasers is the number of goroutines closing replaced files.
const releasers = 4

// dedupGroup is files of one directory, deduplicated together: the
// directory is made writable once for all their renames.
type dedupGroup struct {
	dir   string
	files []dedupFile
}

// DedupTrees is DedupTree over several roots. The walk hands each
// directory's files to a pool of o.Workers, which hash and link them as they
// come (hashing one directory overlaps with linking another).
func (l *Links) DedupTrees(ctx context.Context, roots []string, o DedupOptions) (DedupStats, error) {
	start := time.Now()
	workers := max(o.Workers, 1)
	var (
		mu sync.Mutex
		st DedupStats
	)
	rel := newReleaser(releasers, workers)
	groups := make(chan dedupGroup, workers)
	g, gctx := errgroup.WithContext(ctx)
	for range workers {
		g.Go(func() error {
			for grp := range groups {
				if gctx.Err() != nil {
					continue // drain, so the walk never blocks
				}
				gs := l.dedupGroup(grp, o.Inodes, rel)
				mu.Lock()
				st.Add(gs)
				mu.Unlock()
			}
			return nil
		})
	}
	nfiles := 0
	writable, err := l.walkGroups(gctx, roots, o, groupSize(workers), func(grp dedupGroup) {
		nfiles += len(grp.files)
		groups <- grp
	})
	close(groups)
	g.Wait()
	rel.wait()
	st.Writable += writable
	l.log.Debug("dedup: done", "files", nfiles, "elapsed", time.Since(start))
	if err != nil {
		return st, err
	}
	return st, ctx.Err()
}

// walkGroups walks roots in sorted order and calls emit with the regular
// files of each directory (at most size at a time) before descending
// into its subdirectories. It returns how many writable files it skipped.
func (l *Links) walkGroups(ctx context.Context, roots []string, o DedupOptions, size int, emit func(dedupGroup)) (int, error) {
	writable := 0
	// take says whether the file p, whose lstat is st, is to be linked
	take := func(p string, st *unix.Stat_t) bool {
		switch {
		case st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < o.MinSize:
			return false // symlinks and the rest are never linked
		case o.Inodes != nil && o.Inodes.has(st.Ino):
			return false
		case st.Mode&0o200 != 0:
			l.log.Warn("skipping suspicious writable file", "path", p)
			writable++
			return false
		}
		return true
	}
	file := func(p string, st *unix.Stat_t) dedupFile {
		return dedupFile{path: p, exec: st.Mode&0o100 != 0, size: st.Size}
	}
	var walkDir func(dir string) error
	walkDir = func(dir string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if filepath.Clean(dir) == l.dir {
			return nil
		}
		ents, df, err := readDir(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		dirfd := int(df.Fd())
		var files []dedupFile
		var subdirs []string
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			switch e.Type() {
			case fs.ModeDir:
				subdirs = append(subdirs, p)
				continue
			case 0: // regular file
			default:
				continue // symlinks and the rest are never linked
			}
			// one lstat per regular file, relative to the directory
			var st unix.Stat_t
			if err := unix.Fstatat(dirfd, e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if err == unix.ENOENT {
					continue
				}
				df.Close()
				return &os.PathError{Op: "lstat", Path: p, Err: err}
			}
			if !take(p, &st) {
				continue
			}
			files = append(files, file(p, &st))
			if len(files) == size {
				emit(dedupGroup{dir: dir, files: files})
				files = nil
			}
		}
		df.Close()
		if len(files) > 0 {
			emit(dedupGroup{dir: dir, files: files})
		}
		for _, sd := range subdirs {
			if err := walkDir(sd); err != nil {
				return err
			}
		}
		return nil
	}
	for _, root := range roots {
		var st unix.Stat_t
		if err := unix.Lstat(root, &st); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return writable, &os.PathError{Op: "lstat", Path: root, Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := walkDir(root); err != nil {
				return writable, err
			}
		} else if take(root, &st) {
			emit(dedupGroup{dir: filepath.Dir(root), files: []dedupFile{file(root, &st)}})
		}
	}
	return writable, nil
}

// readDir lists dir sorted by name and returns it open, so its entries can
// be looked at relative to it (the caller closes it).
func readDir(dir string) ([]fs.DirEntry, *os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	f := os.NewFile(uintptr(fd), dir)
	ents, err := f.ReadDir(-1)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return ents, f, nil
}

// dedupGroup hashes and links one group. The descriptors opened to hash the
// files stay open until they are linked, then go to rel: a file replaced by
// a link is freed when the last descriptor closes, not in the rename.
func (l *Links) dedupGroup(grp dedupGroup, inodes *InodeSet, rel *releaser) DedupStats {
	var st DedupStats
	record := func(path string, r Result, err error) {
		if err != nil {
			l.log.Warn("deduplication failed", "path", path, "err", err)
		} else if inodes != nil && r.Outcome != Skipped {
			inodes.add(r.Ino)
		}
		st.Count(r, err)
	}
	todo := make([]PathKey, 0, len(grp.files))
	fds := make([]int, 0, len(grp.files))
	// files are opened relative to their directory (one lookup each, not
	// a walk of the whole path); failing that, by their paths
	dirfd, derr := unix.Open(grp.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if derr == nil {
		defer unix.Close(dirfd)
	}
	for _, f := range grp.files {
		name := f.path
		if derr == nil {
			name = filepath.Base(f.path)
		} else {
			dirfd = unix.AT_FDCWD
		}
		fd, k, err := openHash(dirfd, name, f.path, f.exec, f.size)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			record(f.path, Result{Outcome: Skipped, Reason: "file vanished"}, nil)
		case err != nil:
			record(f.path, Result{}, err)
		default:
			todo = append(todo, PathKey{f.path, k})
			fds = append(fds, fd)
		}
	}
	if len(todo) > 0 {
		rs, errs, rerr := l.CanonicalizeDir(grp.dir, todo)
		for i, pk := range todo {
			record(pk.Path, rs[i], errs[i])
		}
		if rerr != nil {
			l.log.Warn("deduplication: restoring a directory failed", "dir", grp.dir, "err", rerr)
			st.Errors++
		}
	}
	rel.release(fds)
	return st
}

// A releaser closes, on goroutines of its own, the descriptors of files that
// may just have lost their last name. The last close frees the blocks, and
// on a filesystem mounted with discard (or with a large file) that waits
// for the device; done here, the wait overlaps with the next renames
// instead of sitting inside each one.
type releaser struct {
	ch chan []int
	wg sync.WaitGroup
}

func newReleaser(n, queue int) *releaser {
	r := &releaser{ch: make(chan []int, queue)}
	for range n {
		r.wg.Go(func() {
			for fds := range r.ch {
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		})
	}
	return r
}

func (r *releaser) release(fds []int) {
	if len(fds) > 0 {
		r.ch <- fds
	}
}

// wait closes what is queued and returns once every descriptor is closed.
func (r *releaser) wait() {
	close(r.ch)
	r.wg.Wait()
}

// openHash computes the key of the file name (relative to dirfd; path is
// for errors), reading it through a raw descriptor (no
// poller registration: this runs once per file of a store), and returns the
// descriptor open.
func openHash(dirfd int, name, path string, exec bool, size int64) (int, Key, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, Key{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	sum, err := nar.HashFile(exec, size, fdReader(fd))
	if err != nil {
		unix.Close(fd)
		return -1, Key{}, fmt.Errorf("%s: %w", path, err)
	}
	return fd, Key(sum), nil
}

// fdReader reads a raw file descriptor.
type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}
