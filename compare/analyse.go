package compare

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// AnalyseOptions configure Analyse.
type AnalyseOptions struct {
	Strategies []Strategy // All when empty
	// Jobs is how many files are hashed at once; 2 x the CPUs, at least 4,
	// when < 1.
	Jobs   int
	Logger *slog.Logger
	// Progress, if set, is called once the walk is done, with the files
	// (distinct inodes) and bytes to hash, and returns the hooks the hashing
	// reports to (from several goroutines at once).
	Progress func(files int, bytes int64) *store.Progress
}

// Analysis is what Analyse found besides the estimates.
type Analysis struct {
	Items   int   // top-level entries analysed
	Files   int64 // regular files in them (every path)
	Inodes  int64 // distinct inodes among those files (each hashed once)
	Skipped int   // entries that are no regular file, directory or symlink
}

// The estimation rules (package doc): blocks of blk bytes.
const (
	blk         = 4096
	fastSymlink = 60 // shorter symlink targets live in the inode (ext4)
	keyLen      = cas.KeyLen
)

func roundup(n int64) int64 { return (n + blk - 1) / blk * blk }

// dirEst estimates a directory the store makes from its entries' names.
type dirEst struct{ bytes int64 }

func (d *dirEst) entry(nameLen int) { d.bytes += 8 + int64(nameLen+3)/4*4 }

func (d dirEst) cost() int64 { return max(blk, roundup(d.bytes+24)) } // "." and ".."

// content is one inode of the store dir: its key and, when chunked, its
// chunks. Hard links share one.
type content struct {
	size   int64
	exec   bool
	key    cas.Key
	chunks []chunk.Ref
}

// scanned is the walk of a store dir.
type scanned struct {
	items    []string   // item names
	files    []*content // one per regular file (path), hard links repeated
	dirBytes []int64    // per item directory, its estimated cost
	symlinks []int64    // per symlink, its estimated cost
	byInode  map[inode]*content
	paths    map[*content]string // one path to read each content from
	Analysis
}

// Analyse estimates, from the file hashes of the store dir dir (for example
// /nix/store), what each strategy would use to store its items (the top-level
// entries not starting with "."). It only reads: files and directories are
// opened read-only (with O_NOATIME where allowed), nothing is written under
// dir. Each distinct inode is read once.
func Analyse(ctx context.Context, dir string, o AnalyseOptions) ([]Result, Analysis, error) {
	strategies := o.Strategies
	if len(strategies) == 0 {
		strategies = All()
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sc, err := walkStore(ctx, dir, log)
	if err != nil {
		return nil, sc.Analysis, err
	}
	needKeys, needChunks := false, false
	for _, s := range strategies {
		needKeys = needKeys || s != None
		needChunks = needChunks || s == Chunk
	}
	if needKeys {
		if err := sc.hash(ctx, o, needChunks); err != nil {
			return nil, sc.Analysis, err
		}
	}
	rs := make([]Result, len(strategies))
	for i, s := range strategies {
		rs[i] = sc.estimate(s)
	}
	setRatios(rs)
	return rs, sc.Analysis, nil
}

// openRead opens p read-only without updating its access time where the
// kernel lets us (O_NOATIME needs the file's owner or CAP_FOWNER), never
// following a symlink and never blocking on a FIFO put there meanwhile.
func openRead(p string, flags int) (*os.File, error) {
	flags |= os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	f, err := os.OpenFile(p, flags|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) {
		f, err = os.OpenFile(p, flags, 0)
	}
	return f, err
}

// readDir lists a directory through openRead, sorted by name.
func readDir(p string) ([]os.DirEntry, error) {
	f, err := openRead(p, syscall.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	return ents, err
}

func walkStore(ctx context.Context, dir string, log *slog.Logger) (*scanned, error) {
	sc := &scanned{byInode: map[inode]*content{}, paths: map[*content]string{}}
	ents, err := readDir(dir)
	if err != nil {
		return sc, fmt.Errorf("analyse: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // .links, and nothing else a store names so
		}
		if err := ctx.Err(); err != nil {
			return sc, err
		}
		fi, err := e.Info()
		if err != nil {
			return sc, fmt.Errorf("analyse: %w", err)
		}
		sc.items = append(sc.items, e.Name())
		sc.Items++
		if err := sc.walk(filepath.Join(dir, e.Name()), fi, log); err != nil {
			return sc, fmt.Errorf("analyse: %w", err)
		}
	}
	return sc, nil
}

func (sc *scanned) walk(p string, fi os.FileInfo, log *slog.Logger) error {
	st, err := statOf(fi)
	if err != nil {
		return err
	}
	switch m := fi.Mode(); {
	case m.IsRegular():
		in := inode{uint64(st.Dev), st.Ino}
		c := sc.byInode[in]
		if c == nil {
			c = &content{size: fi.Size(), exec: m&0o100 != 0}
			sc.byInode[in] = c
			sc.paths[c] = p
			sc.Inodes++
		}
		sc.files = append(sc.files, c)
		sc.Files++
	case m&os.ModeSymlink != 0:
		cost := int64(0)
		if fi.Size() >= fastSymlink {
			cost = blk
		}
		sc.symlinks = append(sc.symlinks, cost)
	case m.IsDir():
		sc.dirBytes = append(sc.dirBytes, max(blk, roundup(st.Blocks*512)))
		ents, err := readDir(p)
		if err != nil {
			return err
		}
		for _, e := range ents {
			cfi, err := e.Info()
			if err != nil {
				return err
			}
			if err := sc.walk(filepath.Join(p, e.Name()), cfi, log); err != nil {
				return err
			}
		}
	default:
		log.Warn("skipping an entry that is no file, directory or symlink", "path", p, "type", m.Type().String())
		sc.Skipped++
	}
	return nil
}

// hash fills in the key (and with chunks, the chunks) of every content,
// o.Jobs at a time.
func (sc *scanned) hash(ctx context.Context, o AnalyseOptions, chunks bool) error {
	jobs := o.Jobs
	if jobs < 1 {
		jobs = max(2*runtime.NumCPU(), 4)
	}
	var prog *store.Progress
	if o.Progress != nil {
		var bytes int64
		for c := range sc.paths {
			bytes += c.size
		}
		prog = o.Progress(len(sc.paths), bytes)
	}
	splitters := sync.Pool{New: func() any { return chunk.NewSplitter() }}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for c, p := range sc.paths {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			var sp *chunk.Splitter
			if chunks && chunk.Chunked(c.size) {
				sp = splitters.Get().(*chunk.Splitter)
				defer splitters.Put(sp)
			}
			if err := c.read(p, sp, prog); err != nil {
				return fmt.Errorf("analyse: %s: %w", p, err)
			}
			if prog != nil && prog.Files != nil {
				prog.Files(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// fileKey is the store's key of a file: the sha256 of its NAR.
func fileKey(exec bool, size int64, r io.Reader) (cas.Key, error) {
	sum, err := nar.HashFile(exec, size, r)
	return cas.Key(sum), err
}

// read computes c's key from the file at p, and its chunks with sp (when
// not nil) in the same read.
func (c *content) read(p string, sp *chunk.Splitter, prog *store.Progress) error {
	f, err := openRead(p, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = f
	if prog != nil && prog.Bytes != nil {
		r = &countingReader{r: f, fn: prog.Bytes}
	}
	if sp == nil {
		c.key, err = fileKey(c.exec, c.size, r)
		return err
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := sp.Split(pr, func(b []byte) error {
			c.chunks = append(c.chunks, chunk.Ref{Key: chunk.KeyOf(b), Size: uint32(len(b))})
			return nil
		})
		pr.CloseWithError(err) // a splitter that stopped early fails the hashing too
		done <- err
	}()
	c.key, err = fileKey(c.exec, c.size, io.TeeReader(r, pw))
	pw.CloseWithError(err) // nil: the splitter sees the end of the file
	if serr := <-done; err == nil {
		err = serr
	}
	return err
}

type countingReader struct {
	r  io.Reader
	fn func(int64)
}

func (cr *countingReader) Read(b []byte) (int, error) {
	n, err := cr.r.Read(b)
	if n > 0 {
		cr.fn(int64(n))
	}
	return n, err
}

// fanout estimates a content area: a directory of two-character fan-out
// directories, each holding the entries whose names start with them.
type fanout struct {
	u    Usage
	dirs map[string]*dirEst
}

func newFanout() *fanout { return &fanout{dirs: map[string]*dirEst{}} }

func (f *fanout) put(name string, bytes int64) {
	d := f.dirs[name[:2]]
	if d == nil {
		d = &dirEst{}
		f.dirs[name[:2]] = d
	}
	d.entry(len(name))
	f.u.add(bytes)
}

func (f *fanout) usage() Usage {
	u := f.u
	var top dirEst
	for _, d := range f.dirs {
		u.add(d.cost())
		top.entry(2)
	}
	u.add(top.cost())
	return u
}

// estimate applies the rules of the package doc for strategy s.
func (sc *scanned) estimate(s Strategy) Result {
	r := Result{Strategy: s, Estimated: true, Files: sc.Files, Areas: map[string]Usage{}}
	for _, c := range sc.files {
		r.LogicalBytes += c.size
	}
	stored := map[cas.Key]bool{}
	switch s {
	case None, Links8192, Links0:
		var u Usage
		var top, links dirEst
		for _, n := range sc.items {
			top.entry(len(n))
		}
		u.add(top.cost())
		for _, b := range sc.dirBytes {
			u.add(b)
		}
		for _, b := range sc.symlinks {
			u.add(b)
		}
		threshold := s.linksMin()
		for _, c := range sc.files {
			switch {
			case threshold < 0 || c.size < threshold:
				u.add(roundup(c.size))
				r.FilesStored++
				r.StoredBytes += c.size
			case !stored[c.key]:
				stored[c.key] = true
				u.add(roundup(c.size))
				links.entry(keyLen)
				r.FilesStored++
				r.StoredBytes += c.size
			}
		}
		if threshold >= 0 {
			u.add(links.cost())
			r.MetadataBytes = links.cost()
		}
		r.Areas["store"] = u
	case Blob, Chunk:
		blobs, manifests, chunks := newFanout(), newFanout(), newFanout()
		seenChunk := map[cas.Key]bool{}
		for _, c := range sc.files {
			if stored[c.key] {
				continue
			}
			stored[c.key] = true
			r.FilesStored++
			switch {
			case c.size == 0:
				// kept in the tree record
			case s == Blob || !chunk.Chunked(c.size):
				blobs.put(c.key.String(), roundup(c.size))
				r.StoredBytes += c.size
			default:
				manifests.put(c.key.String(), roundup(chunk.ManifestSize(len(c.chunks))))
				for _, ch := range c.chunks {
					if !seenChunk[ch.Key] {
						seenChunk[ch.Key] = true
						chunks.put(ch.Key.String(), roundup(int64(ch.Size)))
						r.Chunks++
						r.StoredBytes += int64(ch.Size)
					}
				}
			}
		}
		r.Areas["blobs"] = blobs.usage()
		if s == Chunk {
			r.Areas["manifests"] = manifests.usage()
			r.Areas["chunks"] = chunks.usage()
			r.MetadataBytes = r.Areas["manifests"].Bytes
		}
	}
	for _, u := range r.Areas {
		r.DiskBytes += u.Bytes
		r.Inodes += u.Inodes
	}
	r.FilesDeduplicated = r.Files - r.FilesStored
	r.DeduplicatedBytes = r.LogicalBytes - r.StoredBytes
	return r
}
