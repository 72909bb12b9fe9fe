package fs

import (
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/registry"
)

// nodeIdentity is a node's file type bits and stable inode number.
func nodeIdentity(item, rel string, n registry.Node) (mode uint32, ino, gen uint64) {
	switch n.Type {
	case registry.TypeRegular:
		ino, gen = fileIno(n.Key)
		return syscall.S_IFREG, ino, gen
	case registry.TypeSymlink:
		return syscall.S_IFLNK, pathIno('l', item, rel), 0
	}
	return syscall.S_IFDIR, pathIno('d', item, rel), 0
}

// child makes the inode of node n at item/rel below parent and fills out.
func (r *Root) child(ctx context.Context, parent *gofs.Inode, item, rel string, n registry.Node, out *fuse.EntryOut) *gofs.Inode {
	mode, ino, gen := nodeIdentity(item, rel, n)
	var node gofs.InodeEmbedder
	switch n.Type {
	case registry.TypeRegular:
		f := &fileNode{root: r, node: n}
		f.attr(&out.Attr)
		node = f
	case registry.TypeSymlink:
		l := &symlinkNode{root: r, target: n.Target, ino: ino}
		l.attr(&out.Attr)
		node = l
	default:
		d := &dirNode{root: r, item: item, rel: rel, digest: n.Key, ino: ino}
		r.dirAttr(&out.Attr, ino)
		node = d
	}
	out.SetEntryTimeout(r.o.Timeout)
	out.SetAttrTimeout(r.o.Timeout)
	return parent.NewInode(ctx, node, gofs.StableAttr{Mode: mode, Ino: ino, Gen: gen})
}

// dirNode is a directory inside an item.
type dirNode struct {
	gofs.Inode
	readOnly
	root   *Root
	item   string
	rel    string
	digest registry.Digest
	ino    uint64
	reads  readRun // files read in listing order (prefetch.go)
}

var (
	_ gofs.NodeLookuper       = (*dirNode)(nil)
	_ gofs.NodeOpendirHandler = (*dirNode)(nil)
	_ gofs.NodeGetattrer      = (*dirNode)(nil)
)

func (d *dirNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.root.dirAttr(&out.Attr, d.ino)
	out.SetTimeout(d.root.o.Timeout)
	return 0
}

func (d *dirNode) dir() (*registry.Directory, syscall.Errno) {
	dir, err := d.root.dirs.get(d.root.reg, d.digest)
	if err != nil {
		return nil, d.root.errno("directory "+d.item+"/"+d.rel, err)
	}
	return dir, 0
}

func (d *dirNode) childRel(name string) string {
	if d.rel == "" {
		return name
	}
	return d.rel + "/" + name
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	dir, errno := d.dir()
	if errno != 0 {
		return nil, errno
	}
	i := searchEntries(dir.Entries, name)
	if i < 0 {
		return nil, syscall.ENOENT // cached by the kernel (items never change)
	}
	return d.root.child(ctx, &d.Inode, d.item, d.childRel(name), dir.Entries[i].Node, out), 0
}

// OpendirHandle lists the directory from its (immutable) record and lets
// the kernel cache the listing.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	dir, errno := d.dir()
	if errno != 0 {
		return nil, 0, errno
	}
	list := make([]fuse.DirEntry, len(dir.Entries))
	for i, e := range dir.Entries {
		mode, ino, _ := nodeIdentity(d.item, d.childRel(e.Name), e.Node)
		list[i] = fuse.DirEntry{Name: e.Name, Mode: mode, Ino: ino}
	}
	return gofs.NewListDirStream(list), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// fileNode is a regular file: its bytes are the blob Key.
type fileNode struct {
	gofs.Inode
	readOnly
	root *Root
	node registry.Node
}

var (
	_ gofs.NodeOpener    = (*fileNode)(nil)
	_ gofs.NodeReader    = (*fileNode)(nil)
	_ gofs.NodeGetattrer = (*fileNode)(nil)
)

func (f *fileNode) attr(a *fuse.Attr) {
	a.Ino, _ = fileIno(f.node.Key)
	a.Mode = syscall.S_IFREG | 0o444
	if f.node.Executable {
		a.Mode |= 0o111
	}
	a.Nlink = 1
	a.Size = uint64(f.node.Size)
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 4096
	setTimes(a)
	a.Owner = fuse.Owner{Uid: f.root.o.UID, Gid: f.root.o.GID}
}

func (f *fileNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	out.SetTimeout(f.root.o.Timeout)
	return 0
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND|syscall.O_CREAT) != 0 {
		return nil, 0, syscall.EROFS
	}
	if f.node.Size == 0 {
		return emptyFile{}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	if c := f.root.o.Chunks; c != nil && chunk.Chunked(f.node.Size) {
		k := cas.Key(f.node.Key)
		// held before the manifest is read: a collection from now on keeps it
		f.root.holdOpen(k, 1)
		cf, err := c.Open(k, f.node.Size)
		if err != nil {
			f.root.holdOpen(k, -1)
			f.root.log.Error("storefs mount: open chunked file", "key", k.String(), "err", err)
			return nil, 0, syscall.EIO
		}
		return &chunkedFile{f: cf, root: f.root, key: k}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	b, err := f.root.fds.get(cas.Key(f.node.Key))
	if err != nil {
		// a valid item whose blob is gone is a damaged store, not a missing name
		f.root.log.Error("storefs mount: open blob", "key", cas.Key(f.node.Key).String(), "err", err)
		return nil, 0, syscall.EIO
	}
	return &blobFile{b: b, fds: f.root.fds, passthrough: f.root.o.Passthrough}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

// Read serves the pages of the file the kernel has not cached: through the
// handle Open made, or, for a file the kernel opened without a request
// (no OpenFiles), from its blob through the shared descriptors. That read
// copies (pread): splicing would need the descriptor to stay open until
// go-fuse has sent the reply, after this returns.
func (f *fileNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if r, ok := fh.(gofs.FileReader); ok {
		return r.Read(ctx, dest, off)
	}
	if off >= f.node.Size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), f.node.Size-off)]
	// no handle: a blob (chunk mode always opens its files, NewRoot)
	k := cas.Key(f.node.Key)
	f.root.reads.Add(1)
	if off == 0 {
		if name, p := f.Parent(); p != nil {
			if d, ok := p.Operations().(*dirNode); ok {
				d.fileReadStarts(name)
			}
		}
	}
	b, err := f.root.fds.get(k)
	if err != nil {
		return nil, f.readErr(k, err)
	}
	defer f.root.fds.put(b)
	n, err := preadFull(b.fd, dest, off)
	if err != nil {
		return nil, f.readErr(k, err)
	}
	return readData(dest[:n]), 0
}

// readData is read data that go-fuse writes to the kernel with one writev
// (it has go-fuse's optional Slices method). A fuse.ReadResultData is first
// offered to splice: per READ a pipe, a resize and a write of the reply
// header into it, all wasted, and for a READ larger than the pipe can hold
// (the mount's 1 MiB READs are) a failure logged on stderr.
func readData(b []byte) fuse.ReadResult { return dataResult{b} }

type dataResult [1][]byte

func (r dataResult) Slices() ([][]byte, fuse.Status)        { return r[:], fuse.OK }
func (r dataResult) Bytes(buf []byte) ([]byte, fuse.Status) { return r[0], fuse.OK }
func (r dataResult) Size() int                              { return len(r[0]) }
func (r dataResult) Done()                                  {}

// preadFull reads dest at off, up to the end of the file.
func preadFull(fd int, dest []byte, off int64) (int, error) {
	n := 0
	for n < len(dest) {
		m, err := unix.Pread(fd, dest[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// spliceMax is the largest read go-fuse can splice: its pipe holds the
// reply's header, the data and a page more, and cannot grow past
// /proc/sys/fs/pipe-max-size (1 MiB by default, the size of this mount's
// READs). go-fuse would try and fail to splice a larger read, and log the
// failure, at every READ; such reads are preads.
var spliceMax = sync.OnceValue(func() int {
	max := 1 << 20
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			max = v
		}
	}
	return max - 2*os.Getpagesize()
})

// readErr logs a failed read of a valid file's content (a damaged store,
// or a blob collected while the kernel knew its file: InUse prevents that
// for collections this process runs) and gives the kernel EIO.
func (f *fileNode) readErr(k cas.Key, err error) syscall.Errno {
	f.root.log.Error("storefs mount: read", "key", k.String(), "err", err)
	return syscall.EIO
}

// blobFile is an open blob: the kernel reads it directly (passthrough) or
// we splice from its descriptor (shared with the other open files of the
// same blob, blobfds.go). A blob collected while open stays readable
// through it.
type blobFile struct {
	b           *blobFD
	fds         *blobFDs
	once        sync.Once
	passthrough bool
}

var (
	_ gofs.FileReader          = (*blobFile)(nil)
	_ gofs.FileReleaser        = (*blobFile)(nil)
	_ gofs.FilePassthroughFder = (*blobFile)(nil)
)

func (b *blobFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if len(dest) <= spliceMax() {
		return fuse.ReadResultFd(uintptr(b.b.fd), off, len(dest)), 0
	}
	n, err := preadFull(b.b.fd, dest, off)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return readData(dest[:n]), 0
}

func (b *blobFile) PassthroughFd() (int, bool) {
	if !b.passthrough {
		return 0, false
	}
	return b.b.fd, true
}

func (b *blobFile) Release(ctx context.Context) syscall.Errno {
	b.once.Do(func() { b.fds.put(b.b) })
	return 0
}

// chunkedFile is an open chunked file (chunk mode): a read opens and reads
// only the chunks it covers, keeping the last few open for the next read.
// While it is open, the root reports its key in use, so a collection run
// through this process (the mount owns the store) keeps its chunks.
type chunkedFile struct {
	f    *chunk.File
	root *Root
	key  cas.Key
}

var (
	_ gofs.FileReader   = (*chunkedFile)(nil)
	_ gofs.FileReleaser = (*chunkedFile)(nil)
)

func (c *chunkedFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := c.f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, syscall.EIO
	}
	return readData(dest[:n]), 0
}

func (c *chunkedFile) Release(ctx context.Context) syscall.Errno {
	c.f.Close()
	c.root.holdOpen(c.key, -1)
	return 0
}

// emptyFile is an open empty file (empty files have no blob).
type emptyFile struct{}

func (emptyFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(nil), 0
}

// symlinkNode is a symlink; the kernel caches its target.
type symlinkNode struct {
	gofs.Inode
	readOnly
	root   *Root
	target string
	ino    uint64
}

var (
	_ gofs.NodeReadlinker = (*symlinkNode)(nil)
	_ gofs.NodeGetattrer  = (*symlinkNode)(nil)
)

func (l *symlinkNode) attr(a *fuse.Attr) {
	a.Ino = l.ino
	a.Mode = syscall.S_IFLNK | 0o777
	a.Nlink = 1
	a.Size = uint64(len(l.target))
	setTimes(a)
	a.Owner = fuse.Owner{Uid: l.root.o.UID, Gid: l.root.o.GID}
}

func (l *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(l.target), 0
}

func (l *symlinkNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.attr(&out.Attr)
	out.SetTimeout(l.root.o.Timeout)
	return 0
}
