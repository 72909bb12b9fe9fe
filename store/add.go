package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/registry"
)

// Tuning of the add pipeline.
const (
	// Files up to this size are read into memory once: hashed, written and
	// fed to the item's NAR hash from the same buffer.
	smallFile = 8 << 20
	// At most this many files may be read ahead of the NAR hasher, and
	// their buffers may hold at most windowBytes: that bounds memory.
	window      = 256
	windowBytes = 256 << 20
)

// Progress receives counts of work done; any field may be nil.
type Progress struct {
	Bytes func(n int64) // bytes hashed into the item's NAR
	Files func(n int)   // files finished
}

func (p *Progress) bytes(n int64) {
	if p != nil && p.Bytes != nil {
		p.Bytes(n)
	}
}

func (p *Progress) files(n int) {
	if p != nil && p.Files != nil {
		p.Files(n)
	}
}

// AddOptions configure Add and PathOf.
type AddOptions struct {
	Name     string   // store path name; the source's base name when empty
	Refs     []string // references: full store paths that must be valid
	Progress *Progress
	// NoDedup (disk mode) adds without `.links` deduplication.
	NoDedup bool
	// Dedup, if set, receives what deduplication did (disk mode).
	Dedup *cas.DedupStats
	// Root, if set, names a permanent GC root (gcroots/ROOT) made for the
	// path as part of the add.
	Root string
}

// SourceStats describe a source tree (for progress bars).
type SourceStats struct {
	Files int
	Bytes int64
}

// Stat walks a source tree the way Add will and counts its files and bytes.
func Stat(src string) (SourceStats, error) {
	_, files, err := walkSource(src)
	var st SourceStats
	for _, f := range files {
		st.Files++
		st.Bytes += f.size
	}
	return st, err
}

// item is one item being built in the staging area.
type item struct {
	s      *Store
	stage  *stage
	dir    string      // staging dir of this item
	tree   string      // disk mode: where the tree is built (dir/tree)
	batch  *cas.Batch  // blob and chunk mode: new blobs
	chunks *chunkStage // chunk mode: new manifests and chunks

	temp    *TempRoots // where the item's temp root goes
	dedup   bool       // disk mode: deduplicate through .links while adding
	statsMu sync.Mutex
	stats   cas.DedupStats
	pending []*node         // files to canonicalise through .links once the item is complete
	pool    *errgroup.Group // import: the workers writing small files
}

func (s *Store) newItem(ctx context.Context, noDedup bool) (*item, error) {
	st, err := s.newStage()
	if err != nil {
		return nil, err
	}
	dir := st.dir
	it := &item{s: s, stage: st, dir: dir, tree: filepath.Join(dir, "tree"), dedup: s.links != nil && !noDedup, temp: s.tempRoots(ctx)}
	if s.mode.trees() {
		b, err := s.blobs.NewBatch(filepath.Join(dir, "blobs"))
		if err != nil {
			st.remove()
			return nil, err
		}
		it.batch = b
	}
	if s.mode == ModeChunk {
		cs, err := s.newChunkStage(dir)
		if err != nil {
			it.batch.Abort()
			st.remove()
			return nil, err
		}
		it.chunks = cs
	}
	return it, nil
}

// discard removes whatever the item left in the staging area.
func (it *item) discard() {
	if it.batch != nil {
		it.batch.Abort()
	}
	if it.chunks != nil {
		it.chunks.abort()
	}
	it.stage.remove()
}

func (it *item) treePath(rel string) string {
	if rel == "" {
		return it.tree
	}
	return filepath.Join(it.tree, filepath.FromSlash(rel))
}

// resolveRefs checks that each reference is a valid path of this store and
// returns their base names, sorted and unique.
func (s *Store) resolveRefs(refs []string) ([]string, error) {
	return s.parseRefs(refs, true)
}

// parseRefs is resolveRefs, checking validity only if valid is set (a
// prepared import's references are checked when it is registered).
func (s *Store) parseRefs(refs []string, valid bool) ([]string, error) {
	var out []string
	for _, r := range refs {
		base, rel, err := SplitStorePath(s.storeDir, r)
		if err != nil {
			return nil, fmt.Errorf("reference %s: %w", r, err)
		}
		if rel != "" {
			return nil, fmt.Errorf("reference %s: not a store path (has a path below the item)", r)
		}
		if !valid {
			out = append(out, base)
			continue
		}
		ok, err := s.reg.IsValid(base)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("reference %s: %w", r, ErrNotValid)
		}
		out = append(out, base)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func (s *Store) fullPaths(bases []string) []string {
	out := make([]string, len(bases))
	for i, b := range bases {
		out[i] = s.FullPath(b)
	}
	return out
}

// SourceName is the store path name of src: name if given, else src's base
// name; either must satisfy CheckName.
func SourceName(src, name string) (string, error) { return nameFor(src, name) }

// CheckSource walks src as Add would and reports the first file it cannot
// add (a device, socket or FIFO), with the same message Add gives.
func CheckSource(src string) error {
	_, _, err := walkSource(src)
	return err
}

func nameFor(src, name string) (string, error) {
	if name == "" {
		abs, err := filepath.Abs(src)
		if err != nil {
			return "", err
		}
		name = filepath.Base(abs)
	}
	return name, CheckName(name)
}

// ResolveRefs checks references as Add does (each a valid store path of this
// store), with the same errors.
func (s *Store) ResolveRefs(refs []string) error {
	_, err := s.resolveRefs(refs)
	return err
}

// PathOfNAR is the store path the NAR read from r would get under name with
// refs, without adding anything. The NAR is checked strictly.
func (s *Store) PathOfNAR(r io.Reader, o AddOptions) (string, error) {
	if err := CheckName(o.Name); err != nil {
		return "", err
	}
	refs, err := s.resolveRefs(o.Refs)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := nar.Copy(h, r); err != nil {
		return "", err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return MakeSourcePath(s.storeDir, sum, o.Name, s.fullPaths(refs)), nil
}

// PathOf is the store path src would get, without adding anything.
func (s *Store) PathOf(ctx context.Context, src string, o AddOptions) (string, error) {
	name, err := nameFor(src, o.Name)
	if err != nil {
		return "", err
	}
	refs, err := s.resolveRefs(o.Refs)
	if err != nil {
		return "", err
	}
	if _, _, err := walkSource(src); err != nil { // the same checks and messages as Add
		return "", err
	}
	h := sha256.New()
	if err := nar.DumpPath(h, src); err != nil {
		return "", err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return MakeSourcePath(s.storeDir, sum, name, s.fullPaths(refs)), nil
}

// Add copies the tree at src into the store and returns its store path.
// Adding an item that is already valid changes nothing and returns its path.
// With o.Root, the path is also made a permanent GC root before the add's
// temp root can go, so no collection can come in between.
func (s *Store) Add(ctx context.Context, src string, o AddOptions) (string, error) {
	for attempt := 1; ; attempt++ {
		p, err := s.add(ctx, src, o)
		if errors.Is(err, ErrContentCollected) && attempt < 3 {
			continue
		}
		if err == nil && o.Root != "" {
			_, err = s.AddRoot(ctx, o.Root, p, false)
		}
		return p, err
	}
}

func (s *Store) add(ctx context.Context, src string, o AddOptions) (string, error) {
	name, err := nameFor(src, o.Name)
	if err != nil {
		return "", err
	}
	refs, err := s.resolveRefs(o.Refs)
	if err != nil {
		return "", err
	}
	start := time.Now()
	root, files, err := walkSource(src)
	if err != nil {
		return "", fmt.Errorf("add %s: %w", src, err)
	}
	walked := time.Now()
	it, err := s.newItem(ctx, o.NoDedup)
	if err != nil {
		return "", fmt.Errorf("add %s: %w", src, err)
	}
	defer it.discard()
	if o.Dedup != nil {
		defer func() { o.Dedup.Add(it.stats) }()
	}
	sum, size, err := it.ingestTree(ctx, root, files, o.Progress)
	if err != nil {
		return "", fmt.Errorf("add %s: %w", src, err)
	}
	ingested := time.Now()
	p := MakeSourcePath(s.storeDir, sum, name, s.fullPaths(refs))
	info := &registry.PathInfo{
		Path:       filepath.Base(p),
		NarHash:    sum,
		NarSize:    size,
		References: refs,
		CA:         "fixed:r:sha256:" + NixHash(sum)[len("sha256:"):],
	}
	if err := it.finish(root, info); err != nil {
		return "", fmt.Errorf("add %s: %w", src, err)
	}
	s.log.Debug("add: done", "path", p, "files", len(files), "walk", walked.Sub(start), "ingest", ingested.Sub(walked), "finish", time.Since(ingested))
	return p, nil
}

// ingestTree copies the files of a walked source into the item (blobs or a
// staged tree) in parallel, while this goroutine computes the item's NAR
// hash in NAR order from the same bytes.
func (it *item) ingestTree(ctx context.Context, root *node, files []*node, prog *Progress) (sum [32]byte, size int64, err error) {
	if it.s.mode == ModeDisk {
		if err := it.skeleton(root); err != nil {
			return sum, 0, err
		}
	}
	for _, f := range files {
		f.done = make(chan struct{})
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(cctx)
	tokens := make(chan struct{}, window)
	// The feeder takes a file's buffer size from the byte budget in file
	// order, and the hasher gives it back in the same order: no deadlock.
	budget := semaphore.NewWeighted(windowBytes)
	weight := func(n *node) int64 {
		if n.size <= smallFile {
			return int64(bufSize(int(n.size) + 1))
		}
		return 1 // streamed: no buffer
	}
	// The queue holds the whole window: the feeder opens and prefetches
	// (fadvise WILLNEED) up to window files ahead of the workers, which keeps
	// the device busy on a cold cache; an unbuffered queue let it run only
	// one file ahead.
	jobs := make(chan *node, window)
	g.Go(func() error {
		defer close(jobs)
		for _, f := range files {
			select {
			case tokens <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			if err := budget.Acquire(gctx, weight(f)); err != nil {
				return err
			}
			f.prefetch()
			select {
			case jobs <- f:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	// More workers than cores: on a cold cache they mostly wait for reads.
	workers := max(8, 4*runtime.GOMAXPROCS(0))
	for range workers {
		g.Go(func() error {
			for f := range jobs {
				f.err = it.ingestFile(f)
				close(f.done)
				if f.err != nil {
					return f.err
				}
			}
			return nil
		})
	}

	h := sha256.New()
	w := nar.NewWriter(h)
	var emit func(n *node) error
	emit = func(n *node) error {
		switch n.typ {
		case nar.TypeSymlink:
			return w.Symlink(n.target)
		case nar.TypeDirectory:
			if err := w.StartDirectory(); err != nil {
				return err
			}
			for _, k := range n.kids {
				if err := w.Entry(k.name); err != nil {
					return err
				}
				if err := emit(k); err != nil {
					return err
				}
			}
			return w.EndDirectory()
		}
		select {
		case <-n.done:
		case <-gctx.Done():
			return gctx.Err()
		}
		if n.err != nil {
			return n.err
		}
		if n.data != nil || n.size == 0 {
			if err := w.RegularBytes(n.exec, n.data); err != nil {
				return err
			}
			if n.buf != nil { // the bytes are hashed: the buffer is free
				putBuf(n.buf)
				n.buf = nil
			}
			n.data = nil
		} else {
			f, err := os.Open(n.copy)
			if err != nil {
				return err
			}
			var r io.Reader = f
			var fh hash.Hash
			if n.recheck { // re-read from the source: it must not have changed
				fh = sha256.New()
				fh.Write(nar.RegularPrefix(n.exec, n.size))
				r = io.TeeReader(f, fh)
			}
			err = w.Regular(n.exec, n.size, r)
			f.Close()
			if err == nil && fh != nil {
				if fh.Write(nar.RegularSuffix(n.size)); cas.Key(fh.Sum(nil)) != n.key {
					err = errChanged
				}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", n.rel, err)
			}
		}
		<-tokens
		budget.Release(weight(n))
		prog.bytes(n.size)
		prog.files(1)
		return nil
	}
	err = emit(root)
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		cancel()
	}
	// A worker's failure cancels gctx, which the hasher may report first:
	// the worker's error is the one that says what happened.
	gerr := g.Wait()
	for _, f := range files { // prefetched but never taken, after a failure
		f.closeSrc()
	}
	if gerr != nil && (err == nil || errors.Is(err, context.Canceled) && ctx.Err() == nil) {
		err = gerr
	}
	if err != nil {
		return sum, 0, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, w.Written(), nil
}

// skeleton creates the staged tree's directories and symlinks (disk mode);
// the workers then fill in the files.
func (it *item) skeleton(n *node) error {
	p := it.treePath(n.rel)
	switch n.typ {
	case nar.TypeDirectory:
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
		for _, k := range n.kids {
			if err := it.skeleton(k); err != nil {
				return err
			}
		}
	case nar.TypeSymlink:
		return os.Symlink(n.target, p)
	}
	return nil
}

var errChanged = errors.New("file changed while it was being added")

// ErrContentCollected: a blob, manifest or chunk an add or import found
// present, and so did not write, was collected before the item was
// registered. Add starts again (it re-reads its source); an import, whose
// stream is gone, fails with it, and its caller may fetch the NAR again.
var ErrContentCollected = errors.New("a collection removed a blob this add relied on; add it again")

// readExact reads a source file that must have exactly its walked size
// into f.data (a recycled buffer, see fileBuf). It asks for one byte more to
// notice a file that grew; a read that comes back short at the walked size
// is the end of the file, with no second read to see it. It uses a raw
// descriptor: an *os.File costs three more system calls per file (the
// poller's attempts to register it), which is a fifth of a small file's cost.
func readExact(f *node) error {
	fd, err := f.openSrc()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	fb := getBuf(int(f.size) + 1)
	buf := fb.b[:f.size+1]
	var n int
	for n < len(buf) {
		want := len(buf) - n
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			putBuf(fb)
			return &os.PathError{Op: "read", Path: f.src, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
		if m < want && int64(n) == f.size {
			break
		}
	}
	if int64(n) != f.size {
		putBuf(fb)
		return fmt.Errorf("%s: %w (size %d, read %d)", f.src, errChanged, f.size, n)
	}
	f.buf, f.data = fb, buf[:f.size]
	return nil
}

// ingestFile stores one regular file of an add: in blob mode as a blob
// (written only if new), in disk mode into the staged tree.
func (it *item) ingestFile(n *node) error {
	if it.s.mode == ModeDisk {
		return it.copyFile(n)
	}
	if n.size <= smallFile {
		if err := readExact(n); err != nil {
			return err
		}
		return it.putData(n, n.data)
	}
	if it.chunks != nil {
		return it.putChunkedFile(n)
	}
	f, err := n.openSrcFile()
	if err != nil {
		return err
	}
	defer f.Close()
	k, err := nar.HashFile(n.exec, n.size, f)
	if err != nil {
		return fmt.Errorf("%s: %w", n.src, err)
	}
	n.key = k
	if need, err := it.batch.NeedSize(k, n.size); err != nil {
		return err
	} else if need {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if _, err := it.batch.PutReader(k, n.exec, n.size, f); err != nil {
			return fmt.Errorf("%s: %w", n.src, err)
		}
	}
	n.copy = it.batch.Path(k)
	return nil
}

// copyFile copies a file into the staged tree, canonical: mode 0444 or 0555,
// mtime 1. With deduplication, a file whose `.links` entry exists becomes a
// link to it without its bytes being written, and a new one becomes the
// entry (or a link, if another process made the entry meanwhile).
func (it *item) copyFile(n *node) error {
	dst := it.treePath(n.rel)
	dedup := it.dedup && n.size >= it.s.linksMin
	if n.size <= smallFile {
		if err := readExact(n); err != nil {
			return err
		}
		data := n.data
		if dedup {
			n.key = nar.HashBytes(n.exec, data)
			if it.linkExisting(n, dst) {
				return nil
			}
		}
		if err := writeFile(dst, n.exec, data); err != nil {
			return err
		}
	} else {
		n.copy = dst
		if !dedup {
			return copyFile(dst, n, nil)
		}
		in, err := n.openSrcFile()
		if err != nil {
			return err
		}
		k, err := nar.HashFile(n.exec, n.size, in)
		in.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", n.src, err)
		}
		n.key = k
		if it.linkExisting(n, dst) {
			return nil
		}
		h := sha256.New()
		h.Write(nar.RegularPrefix(n.exec, n.size))
		if err := copyFile(dst, n, h); err != nil {
			return err
		}
		h.Write(nar.RegularSuffix(n.size))
		if !bytes.Equal(h.Sum(nil), k[:]) {
			return fmt.Errorf("%s: %w", n.src, errChanged)
		}
	}
	if dedup {
		it.pendingLink(n)
	}
	return nil
}

// linkExisting makes dst a link to n's `.links` entry if there is one.
func (it *item) linkExisting(n *node, dst string) bool {
	ok, err := it.s.links.LinkExisting(n.key, n.size, n.exec, dst)
	if err != nil {
		it.s.log.Warn("linking to an existing .links entry failed", "path", n.rel, "err", err)
		it.count(cas.Result{}, err)
		return false
	}
	if ok {
		it.count(cas.Result{Outcome: cas.Linked, Size: n.size}, nil)
	}
	return ok
}

// pendingLink queues a staged file for canonicalisation in finish: new
// `.links` entries appear only for items that were read completely, so a
// refused import or a failed add leaves `.links` as it was.
func (it *item) pendingLink(n *node) {
	it.statsMu.Lock()
	it.pending = append(it.pending, n)
	it.statsMu.Unlock()
}

// linkPending canonicalises the queued files, several at once (`.links`
// is safe against concurrent deduplicators, in or across processes).
// Failures are counted, never returned: deduplication never fails an add.
func (it *item) linkPending() {
	work := make(chan *node)
	var wg sync.WaitGroup
	for range min(len(it.pending), max(4, 2*runtime.GOMAXPROCS(0))) {
		wg.Go(func() {
			for n := range work {
				r, err := it.s.links.Canonicalize(it.treePath(n.rel), n.key)
				if err != nil {
					it.s.log.Warn("deduplication failed", "path", n.rel, "err", err)
				}
				it.count(r, err)
			}
		})
	}
	for _, n := range it.pending {
		work <- n
	}
	close(work)
	wg.Wait()
	it.pending = nil
}

func (it *item) count(r cas.Result, err error) {
	it.statsMu.Lock()
	it.stats.Count(r, err)
	it.statsMu.Unlock()
}

// writeFile creates dst with data, canonical (mode 0444 or 0555, mtime 1),
// through a raw descriptor: create, write, futimens, close (an *os.File
// would add the poller's three calls, and a utimes by path a lookup).
func writeFile(dst string, exec bool, data []byte) error {
	mode := fileMode(exec)
	fd, err := unix.Open(dst, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, uint32(mode))
	if err != nil {
		return &os.PathError{Op: "open", Path: dst, Err: err}
	}
	for len(data) > 0 && err == nil {
		var n int
		n, err = unix.Write(fd, data)
		switch {
		case err == unix.EINTR:
			err = nil
		case err == nil && n == 0:
			err = io.ErrShortWrite
		}
		data = data[max(n, 0):]
	}
	if err == nil && mode&^umask != mode {
		err = unix.Fchmod(fd, uint32(mode))
	}
	if err == nil {
		err = futimens(fd, mtime1)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return &os.PathError{Op: "write", Path: dst, Err: err}
	}
	return nil
}

// futimens sets a descriptor's atime and mtime (utimensat with a nil path).
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// copyFile copies n.src to dst (copy_file_range where possible, or through
// h when a hash of the bytes written is wanted).
func copyFile(dst string, n *node, h io.Writer) error {
	out, err := createFile(dst, n.exec)
	if err != nil {
		return err
	}
	defer out.Close()
	in, err := n.openSrcFile()
	if err != nil {
		return err
	}
	defer in.Close()
	var c int64
	if h != nil {
		c, err = io.CopyN(io.MultiWriter(out, h), in, n.size)
	} else {
		c, err = io.CopyN(out, in, n.size)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: %w (size %d, read %d)", n.src, errChanged, n.size, c)
		}
		return err
	}
	return canonFile(out, n.exec)
}

func fileMode(exec bool) os.FileMode {
	if exec {
		return 0o555
	}
	return 0o444
}

var mtime1 = []unix.Timespec{{Sec: 1}, {Sec: 1}}

// createFile creates a file of a staged tree with its canonical mode
// already (written through the descriptor opened here).
func createFile(dst string, exec bool) (*os.File, error) {
	return os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode(exec))
}

// umask is the process's file mode creation mask, read once at start-up.
var umask = func() os.FileMode {
	m := unix.Umask(0)
	unix.Umask(m)
	return os.FileMode(m)
}()

// canonFile finishes a file made by createFile: its mode (if the umask
// took bits away) and mtime 1.
func canonFile(f *os.File, exec bool) error {
	if mode := fileMode(exec); mode&^umask != mode {
		if err := f.Chmod(mode); err != nil {
			return err
		}
	}
	return futimens(int(f.Fd()), mtime1)
}

// canonTree makes a staged tree canonical bottom-up: directories 0555 and
// symlinks and directories mtime 1 (files were done as they were written).
// The root directory is left writable: renaming it into the store needs that;
// finish canonicalises it after the rename.
func (it *item) canonTree(n *node, isRoot bool) error {
	p := it.treePath(n.rel)
	switch n.typ {
	case nar.TypeSymlink:
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, mtime1, unix.AT_SYMLINK_NOFOLLOW)
	case nar.TypeDirectory:
		for _, k := range n.kids {
			if err := it.canonTree(k, false); err != nil {
				return err
			}
		}
		if isRoot {
			return nil
		}
		return canonDir(p)
	}
	return nil
}

func canonDir(p string) error {
	if err := os.Chmod(p, 0o555); err != nil {
		return err
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, mtime1, 0)
}

// finish makes the item valid: blob mode commits the staged blobs and
// registers the tree; disk mode moves the staged tree into the store. Both
// make the contents durable before registering.
func (it *item) finish(root *node, info *registry.PathInfo) error {
	s := it.s
	s.startWriteback() // the content is all written: start its writeback now
	info.RegistrationTime = time.Now()
	if s.mode.trees() {
		if valid, err := s.tempRoot(it.temp, info.Path); err != nil || valid {
			return err
		}
		dirs := map[registry.Digest][]byte{}
		info.Root = treeRecords(root, dirs)
		return s.registerChecked(info, dirs, root, it.batch, it.chunks)
	}

	lock, err := s.lockPath(info.Path)
	if err != nil {
		return err
	}
	defer lock.unlock()
	// Temp-root the path before it appears in the store, until it is
	// registered (the finalize-store-file fix): a collector running between
	// the rename and the registration must not delete it.
	if valid, err := s.tempRoot(it.temp, info.Path); err != nil || valid {
		return err
	}
	it.linkPending()
	if err := it.canonTree(root, true); err != nil {
		return err
	}
	dst := filepath.Join(s.RealStoreDir(), info.Path)
	if _, err := os.Lstat(dst); err == nil {
		s.log.Warn("removing invalid leftover in the store", "path", dst)
		if err := removeAll(dst); err != nil {
			return err
		}
	}
	if err := os.Rename(it.tree, dst); err != nil {
		return err
	}
	switch root.typ {
	case nar.TypeDirectory:
		err = canonDir(dst)
	case nar.TypeSymlink:
		err = unix.UtimesNanoAt(unix.AT_FDCWD, dst, mtime1, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil {
		err = s.syncState()
	}
	if err == nil {
		err = s.registerChecked(info, nil, nil, nil, nil)
	}
	if err != nil {
		removeAll(dst) // not valid, so nobody can depend on it
	}
	return err
}

// tempRoot temp-roots base and reports whether it is valid already, both
// under the shared GC lock: a collection either saw the temp root, or had
// finished deleting the path (which then is not valid, and is made again).
func (s *Store) tempRoot(t *TempRoots, base string) (valid bool, err error) {
	unlock, err := s.lockGC(false)
	if err != nil {
		return false, err
	}
	defer unlock()
	if err := t.Add(base); err != nil {
		return false, err
	}
	return s.reg.IsValid(base)
}

// registerChecked registers under the shared GC lock. In blob and chunk
// mode it moves the item's new content (chunks, manifests, blobs) into the
// store and makes it durable under that lock too (a collection sweeps
// unnamed content), then checks that everything the tree relies on is
// present: the add may have found a blob, manifest or chunk present, and not
// written it, that a collection removed since, as nothing named it then.
func (s *Store) registerChecked(info *registry.PathInfo, dirs map[registry.Digest][]byte, root *node, batch *cas.Batch, cs *chunkStage) error {
	unlock, err := s.lockGC(false)
	if err != nil {
		return err
	}
	defer unlock()
	if cs != nil {
		if err := cs.commit(); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if batch != nil {
		if err := batch.Commit(); err != nil {
			return err
		}
		t1 := time.Now()
		if err := s.syncState(); err != nil {
			return err
		}
		s.log.Debug("add: content committed", "path", info.Path, "commit", t1.Sub(t0), "sync", time.Since(t1))
	}
	if root != nil {
		if err := s.checkContents(info, root, batch, cs); err != nil {
			return err
		}
	}
	t2 := time.Now()
	err = s.register([]registry.Registration{{Info: info, Dirs: dirs}})
	s.log.Debug("add: registered", "path", info.Path, "elapsed", time.Since(t2))
	return err
}
