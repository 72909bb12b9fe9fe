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
	"syscall"
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

// DedupTrees is DedupTree over several roots, all walked first, then
// hashed and linked by one pool of o.Workers.
func (l *Links) DedupTrees(ctx context.Context, roots []string, o DedupOptions) (DedupStats, error) {
	start := time.Now()
	var st DedupStats
	var files []dedupFile
	// visit looks at one node whose lstat result is fi.
	var visit func(p string, fi os.FileInfo) error
	visit = func(p string, fi os.FileInfo) error {
		switch {
		case fi.IsDir():
			if filepath.Clean(p) == l.dir {
				return nil
			}
			ents, err := os.ReadDir(p)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			for _, e := range ents {
				info, err := e.Info() // one lstat per entry
				if err != nil {
					if errors.Is(err, fs.ErrNotExist) {
						continue
					}
					return err
				}
				if o.Inodes != nil && !info.IsDir() && o.Inodes.has(inode(info)) {
					continue
				}
				if err := visit(filepath.Join(p, e.Name()), info); err != nil {
					return err
				}
			}
		case fi.Mode().IsRegular():
			if fi.Size() < o.MinSize {
				return nil
			}
			if fi.Mode()&0o200 != 0 {
				l.log.Warn("skipping suspicious writable file", "path", p)
				st.Writable++
				return nil
			}
			files = append(files, dedupFile{path: p, exec: fi.Mode()&0o100 != 0, size: fi.Size()})
		}
		return nil
	}
	walk := func(p string) error {
		fi, err := os.Lstat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		return visit(p, fi)
	}
	for _, root := range roots {
		if err := walk(root); err != nil {
			return st, err
		}
	}
	workers := max(o.Workers, 1)
	l.log.Debug("dedup: walked", "files", len(files), "elapsed", time.Since(start))
	slices.SortStableFunc(files, func(a, b dedupFile) int { return strings.Compare(filepath.Dir(a.path), filepath.Dir(b.path)) })

	// Hash every file in parallel...
	type hashed struct {
		key Key
		res *Result // set when hashing ended it (vanished file)
		err error
	}
	hs := make([]hashed, len(files))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i, f := range files {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			k, err := hashPath(f.path, f.exec, f.size)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				hs[i].res = &Result{Outcome: Skipped, Reason: "file vanished"}
			case err != nil:
				hs[i].err = err
			}
			hs[i].key = k
			return nil
		})
	}
	g.Wait()
	if err := ctx.Err(); err != nil {
		return st, err
	}
	l.log.Debug("dedup: hashed", "elapsed", time.Since(start))

	// ...then link directory by directory, each made writable once for all
	// its renames (the walk lists a directory's files together).
	var mu sync.Mutex
	record := func(f dedupFile, r Result, err error) {
		if err != nil {
			l.log.Warn("deduplication failed", "path", f.path, "err", err)
		} else if o.Inodes != nil && r.Outcome != Skipped {
			o.Inodes.add(r.Ino)
		}
		mu.Lock()
		st.Count(r, err)
		mu.Unlock()
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for start := 0; start < len(files); {
		end := start + 1
		dir := filepath.Dir(files[start].path)
		for end < len(files) && filepath.Dir(files[end].path) == dir {
			end++
		}
		group, ghs := files[start:end], hs[start:end]
		start = end
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			var todo []PathKey
			var idx []int
			for i, h := range ghs {
				if h.res != nil || h.err != nil {
					var r Result
					if h.res != nil {
						r = *h.res
					}
					record(group[i], r, h.err)
					continue
				}
				todo = append(todo, PathKey{group[i].path, h.key})
				idx = append(idx, i)
			}
			if len(todo) == 0 {
				return nil
			}
			rs, errs, rerr := l.CanonicalizeDir(dir, todo)
			for j, i := range idx {
				record(group[i], rs[j], errs[j])
			}
			if rerr != nil {
				l.log.Warn("deduplication: restoring a directory failed", "dir", dir, "err", rerr)
				mu.Lock()
				st.Errors++
				mu.Unlock()
			}
			return nil
		})
	}
	g.Wait()
	l.log.Debug("dedup: linked", "elapsed", time.Since(start))
	return st, ctx.Err()
}

// hashPath computes a file's key, reading it through a raw descriptor (no
// poller registration: this runs once per file of a store).
func hashPath(path string, exec bool, size int64) (Key, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Key{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	sum, err := nar.HashFile(exec, size, fdReader(fd))
	if err != nil {
		return Key{}, fmt.Errorf("%s: %w", path, err)
	}
	return Key(sum), nil
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

func inode(fi os.FileInfo) uint64 {
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
