package fs

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/storepath"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/registry"
)

// Options configure the view.
type Options struct {
	Logger *slog.Logger
	// UID and GID own every file (the mounting user by default).
	UID, GID uint32
	// OpenFiles has every open of a file sent to storefs (an OPEN, and a
	// RELEASE after the last close), as passthrough needs. Without it, the
	// kernel opens files without a request (noopendir.go): no round trip
	// per open, and each file's pages stay cached across opens. Chunk mode
	// always opens files: its reads keep per-open chunk descriptors.
	OpenFiles bool
	// Passthrough asks for kernel passthrough to blob files when they are
	// opened (OpenFiles; needs root and Linux 6.9+; go-fuse falls back to
	// reads spliced from the blob fd).
	Passthrough bool
	// Timeout is the kernel's entry and attribute timeout for item
	// contents (immutable); one hour when zero.
	Timeout time.Duration
	// Chunks are the manifest and chunk areas of a chunk-mode store: its
	// large files are read from their chunks (nil in blob mode).
	Chunks *chunk.Areas
	// Used, if set, is called with an item's base name before the kernel
	// gets its entry (a lookup, or a listing that returns entries): storefs
	// run temp-roots the items its command uses. It runs in the FUSE
	// handler and must be quick.
	Used func(base string)
	// NoPrefetch turns off the prefetcher (prefetch.go): no blobs read
	// ahead of reads in listing order.
	NoPrefetch bool
}

// Root is the store directory: it lists the valid paths.
type Root struct {
	gofs.Inode
	readOnly
	reg      *registry.Registry
	blobs    *cas.Blobs
	storeDir string
	o        Options
	log      *slog.Logger
	dirs     *dirCache
	fds      *blobFDs
	pre      *prefetcher // nil with NoPrefetch

	notifyMu sync.Mutex

	openMu  sync.Mutex
	openNow map[cas.Key]int // chunked files held open, by key

	reads      atomic.Int64 // READs served without a handle (tests: export_test.go)
	prefetched atomic.Int64 // blobs read ahead (tests)
}

// InUse lists the keys of the files whose content a collection must keep
// (store.KeepInUse), so that a file held open stays readable after its item
// is collected: the chunked files held open and, when the kernel opens
// files without telling storefs (no OpenFiles), every file the kernel
// knows, since any of them may be open. (A file held open pins its inode,
// so the kernel does not forget it; the others it forgets once the
// collection has invalidated their entries, and the next collection frees
// their blobs.)
func (r *Root) InUse() []cas.Key {
	r.openMu.Lock()
	out := make([]cas.Key, 0, len(r.openNow))
	for k := range r.openNow {
		out = append(out, k)
	}
	r.openMu.Unlock()
	if !r.o.OpenFiles {
		out = r.knownFiles(out)
	}
	return out
}

// knownFiles appends the keys of the (non-empty) files among the nodes the
// kernel knows: go-fuse's tree holds exactly those (a node leaves it with
// the kernel's FORGET), and an open file keeps its parents in it.
func (r *Root) knownFiles(out []cas.Key) []cas.Key {
	seen := map[*gofs.Inode]bool{}
	stack := []*gofs.Inode{&r.Inode}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, ch := range n.Children() {
			if seen[ch] {
				continue
			}
			seen[ch] = true
			switch op := ch.Operations().(type) {
			case *fileNode:
				if op.node.Size > 0 {
					out = append(out, cas.Key(op.node.Key))
				}
			case *dirNode:
				stack = append(stack, ch)
			}
		}
	}
	return out
}

func (r *Root) holdOpen(k cas.Key, delta int) {
	r.openMu.Lock()
	defer r.openMu.Unlock()
	if r.openNow == nil {
		r.openNow = map[cas.Key]int{}
	}
	if r.openNow[k] += delta; r.openNow[k] <= 0 {
		delete(r.openNow, k)
	}
}

// idleBlobFDs is how many blob descriptors the mount keeps open for files
// no process has open (blobfds.go).
const idleBlobFDs = 1024

// NewRoot returns the root of a view of the store whose registry and blob
// area are given.
func NewRoot(reg *registry.Registry, blobs *cas.Blobs, storeDir string, o Options) *Root {
	if o.Timeout == 0 {
		o.Timeout = time.Hour
	}
	if o.Chunks != nil {
		o.OpenFiles = true
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Root{reg: reg, blobs: blobs, storeDir: storeDir, o: o, log: log, dirs: newDirCache(8192), fds: newBlobFDs(blobs, idleBlobFDs)}
	if !o.NoPrefetch {
		r.pre = newPrefetcher(prefetchWorkers, prefetchQueue)
	}
	return r
}

var (
	_ gofs.NodeLookuper       = (*Root)(nil)
	_ gofs.NodeReaddirer      = (*Root)(nil)
	_ gofs.NodeOpendirHandler = (*Root)(nil)
	_ gofs.NodeGetattrer      = (*Root)(nil)
	_ gofs.NodeStatfser       = (*Root)(nil)
)

func (r *Root) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.dirAttr(&out.Attr, 1)
	return 0
}

func (r *Root) dirAttr(a *fuse.Attr, ino uint64) {
	a.Ino = ino
	a.Mode = syscall.S_IFDIR | 0o555
	a.Nlink = 2
	a.Size = 4096
	a.Blksize = 4096
	setTimes(a)
	a.Owner = fuse.Owner{Uid: r.o.UID, Gid: r.o.GID}
}

func setTimes(a *fuse.Attr) {
	a.Mtime, a.Atime, a.Ctime = 1, 1, 1
}

// Lookup finds a valid path by its base name.
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if _, err := storepath.FromString(name); err != nil {
		// Never a store path, so never valid: the kernel may cache the
		// miss (the mount's negative timeout). Programs probe such names
		// in the store dir at every start (python looks for <storedir>/lib
		// when it searches its prefix upwards from its binary).
		return nil, syscall.ENOENT
	}
	pi, err := r.reg.Get(name)
	if err != nil {
		if errors.Is(err, registry.ErrNotValid) {
			// The root changes: a miss must not be cached (a path may be
			// added next). A non-zero entry timeout makes go-fuse send a
			// plain error instead of a cacheable negative entry.
			out.SetEntryTimeout(time.Nanosecond)
			return nil, syscall.ENOENT
		}
		return nil, r.errno("lookup "+name, err)
	}
	if r.o.Used != nil {
		r.o.Used(pi.Path)
	}
	return r.child(ctx, &r.Inode, pi.Path, "", pi.Root, out), 0
}

// Readdir streams the valid paths from the registry, a page at a time.
func (r *Root) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return &rootStream{r: r}, 0
}

// OpendirHandle opens the root listing (never cached by the kernel: the
// root changes). Its handle answers READDIRPLUS lookups from the page in
// hand instead of one registry lookup per entry.
func (r *Root) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return &rootDir{rootStream: rootStream{r: r}}, 0, 0
}

// rootDir is an open root listing.
type rootDir struct {
	rootStream
	last *registry.PathInfo // the entry Readdirent returned last
}

var (
	_ gofs.FileReaddirenter = (*rootDir)(nil)
	_ gofs.FileLookuper     = (*rootDir)(nil)
	_ gofs.FileSeekdirer    = (*rootDir)(nil)
)

func (d *rootDir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !d.HasNext() {
		return nil, 0
	}
	if d.err == 0 {
		d.last = d.page[d.i]
	}
	de, errno := d.Next()
	if errno != 0 {
		return nil, errno
	}
	return &de, 0
}

func (d *rootDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if pi := d.last; pi != nil && pi.Path == name {
		if d.r.o.Used != nil {
			d.r.o.Used(pi.Path)
		}
		return d.r.child(ctx, &d.r.Inode, pi.Path, "", pi.Root, out), 0
	}
	return d.r.Lookup(ctx, name, out)
}

func (d *rootDir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.last = nil
	return d.rootStream.Seekdir(ctx, off)
}

func (d *rootDir) Releasedir(ctx context.Context, releaseFlags uint32) {}

type rootStream struct {
	r     *Root
	page  []*registry.PathInfo
	i     int
	after string
	done  bool
	err   syscall.Errno
}

var _ gofs.FileSeekdirer = (*rootStream)(nil)

// Root listing offsets (d_off, telldir cookies) are not positions but the
// entries' names: rootOff maps a base name's first 12 nix32 characters (60
// bits of its hash) to a number in the same order. So an offset means the
// same entry after items were added or collected, and a listing resumed at
// an offset (seekdir, or the kernel re-reading the root after its cached
// listing was dropped mid-way) continues after that entry, without
// duplicates or gaps, however many items came or went before it.
const offChars = 12

func rootOff(name string) uint64 {
	var v uint64
	for i := range offChars {
		d := 0
		if i < len(name) {
			d = max(strings.IndexByte(nixbase32.Alphabet, name[i]), 0)
		}
		v = v<<5 | uint64(d)
	}
	return v + 1 // 0 is the start
}

// afterOff is the Page cursor of the entries after the one at off.
func afterOff(off uint64) string {
	v := off - 1
	b := make([]byte, offChars, offChars+1)
	for i := offChars - 1; i >= 0; i-- {
		b[i] = nixbase32.Alphabet[v&31]
		v >>= 5
	}
	return string(append(b, 0xff)) // past every name with that prefix
}

// Seekdir restarts the listing after the entry at off (rewinddir: 0).
func (s *rootStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	*s = rootStream{r: s.r}
	if off > 0 {
		s.after = afterOff(off)
	}
	return 0
}

const rootPage = 1024

func (s *rootStream) fill() {
	if s.i < len(s.page) || s.done {
		return
	}
	page, err := s.r.reg.Page(s.after, rootPage)
	if err != nil {
		s.err = s.r.errno("readdir", err)
		s.done = true
		return
	}
	s.page, s.i = page, 0
	if len(page) < rootPage {
		s.done = true
	}
	if len(page) > 0 {
		s.after = page[len(page)-1].Path
	}
}

func (s *rootStream) HasNext() bool {
	s.fill()
	return s.i < len(s.page) || s.err != 0
}

func (s *rootStream) Next() (fuse.DirEntry, syscall.Errno) {
	if s.err != 0 {
		err := s.err
		s.err = 0
		return fuse.DirEntry{}, err
	}
	pi := s.page[s.i]
	s.i++
	mode, ino, _ := nodeIdentity(pi.Path, "", pi.Root)
	return fuse.DirEntry{Name: pi.Path, Mode: mode, Ino: ino, Off: rootOff(pi.Path)}, 0
}

func (s *rootStream) Close() {}

func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(r.blobs.Dir(), &st); err != nil {
		return r.errno("statfs", err)
	}
	out.FromStatfsT(&st)
	out.NameLen = 255
	return 0
}

// errno maps an error to the errno FUSE returns, in one place. Unknown
// errors are logged and become EIO.
func (r *Root) errno(op string, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, registry.ErrNotValid), errors.Is(err, syscall.ENOENT):
		return syscall.ENOENT
	}
	r.log.Error("storefs mount: "+op, "err", err)
	return syscall.EIO
}

// Changed tells the kernel about paths that became valid or stopped being
// valid, from a goroutine of its own (never from a FUSE handler).
func (r *Root) Changed(added, removed []string) {
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	// The kernel caches the root's listing (noOpendir): drop it now, so
	// that a listing after the add or collection returns sees the change.
	// (Called from the store's goroutines, never from a FUSE handler;
	// before the mount is served it fails and does not matter.)
	r.NotifyContent(0, 0)
	if len(removed) > 0 {
		r.fds.dropIdle() // a collection: let the blobs it deletes go
	}
	go func() {
		r.notifyMu.Lock()
		defer r.notifyMu.Unlock()
		for _, name := range added {
			r.NotifyEntry(name) // drops a negative dentry, if any
		}
		for _, name := range removed {
			if ch := r.GetChild(name); ch != nil {
				invalidateBelow(ch)
				r.NotifyDelete(name, ch)
			} else {
				r.NotifyEntry(name)
			}
		}
	}()
}

// invalidateBelow drops the kernel's entries below n (a collected item),
// deepest first. Dropping the item's own entry unhashes only it: a file
// held open below it would keep its (hashed) entry after its close, its
// inode with it, and the kernel would not forget it for as long as memory
// allows; an InUse that reports every known file (no OpenFiles) would then
// keep its blob through every later collection. An unhashed entry dies at
// its last close, and the kernel forgets its inode.
func invalidateBelow(n *gofs.Inode) {
	if _, ok := n.Operations().(*dirNode); !ok {
		return
	}
	for name, ch := range n.Children() {
		invalidateBelow(ch)
		n.NotifyEntry(name)
	}
}
