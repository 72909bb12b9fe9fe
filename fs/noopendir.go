package fs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// noOpendir wraps go-fuse's node bridge so that the kernel never sends
// OPENDIR or RELEASEDIR: the first OPENDIR answers ENOSYS, which tells
// Linux (FUSE_NO_OPENDIR_SUPPORT, 5.1+) to open every directory of the
// mount without asking, with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, i.e. the
// listing is cached in the directory's page cache and kept across opens.
// That halves the requests of a metadata walk, where the kernel has every
// entry and attribute cached already (items never change) and each
// directory still cost an OPENDIR and a RELEASEDIR round trip.
//
// READDIR and READDIRPLUS then come with no file handle. The bridge
// answers them through a directory handle of its own: opened for the first
// request of a listing (offset 0, or any offset: the handles seek), parked
// under (node, next offset) when the reply was full, and picked up by the
// request that continues the listing, so a long listing (the root of a
// store of 100k items) streams from one handle instead of re-seeking. A
// listing's handle is released when it ends (an empty reply); parked
// handles beyond maxParked are released oldest first (a reader that
// stopped half-way), and those of a node the kernel forgets are released
// before the bridge hears of the FORGET (it must not keep a handle of a
// node it no longer knows).
//
// The root's listing is cached too, then: Root.Changed invalidates it (its
// page cache) before an add or a collection returns, so a listing after
// that sees the change.
//
// Files likewise, unless the mount opens them (Options.OpenFiles): the
// first OPEN answers ENOSYS, where the kernel says it handles that
// (FUSE_NO_OPEN_SUPPORT, Linux 4.19+), and from then on the kernel opens
// every file without a request and never sends its RELEASE, keeping its
// pages cached across opens (FOPEN_KEEP_CACHE). Every OPEN and RELEASE is
// a round trip to storefs (about 70 us on a 2-CPU VM, ten times a native
// open), paid by every open of every file a program start touches; a
// store's files never change, so nothing needs the open. READs then come
// without a handle, and fileNode.Read serves them from the blob. FLUSH
// (sent at every close of a file opened that way) answers ENOSYS, which
// tells the kernel never to send it again.
type noOpendir struct {
	fuse.RawFileSystem
	files bool // answer OPEN with ENOSYS when the kernel supports it
	srv   *fuse.Server

	mu     sync.Mutex
	parked map[parkKey]uint64 // open bridge handles by where they continue
	order  []parkKey          // parking order, for eviction
	nodes  map[uint64]int     // parked handles per node
}

type parkKey struct{ node, off uint64 }

const maxParked = 256

func newNoOpendir(fs fuse.RawFileSystem, files bool) *noOpendir {
	return &noOpendir{RawFileSystem: fs, files: files, parked: map[parkKey]uint64{}, nodes: map[uint64]int{}}
}

func (w *noOpendir) Init(srv *fuse.Server) {
	w.srv = srv
	w.RawFileSystem.Init(srv)
}

func (w *noOpendir) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if w.files && w.srv != nil && w.srv.KernelSettings().Flags64()&fuse.CAP_NO_OPEN_SUPPORT != 0 {
		return fuse.ENOSYS
	}
	return w.RawFileSystem.Open(cancel, in, out)
}

// Flush has nothing to do: nothing is written. (Files opened with a
// request are opened FOPEN_NOFLUSH, and do not send it.)
func (w *noOpendir) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

func (w *noOpendir) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (w *noOpendir) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.readDir(cancel, in, out, w.RawFileSystem.ReadDir)
}

func (w *noOpendir) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.readDir(cancel, in, out, w.RawFileSystem.ReadDirPlus)
}

func (w *noOpendir) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, read func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	if in.Fh != 0 { // a handle of the bridge's own (a kernel before 5.1 opened it)
		return read(cancel, in, out)
	}
	fh, ok := w.unpark(parkKey{in.NodeId, in.Offset})
	if !ok {
		var oo fuse.OpenOut
		st := w.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &oo)
		if !st.Ok() {
			return st
		}
		fh = oo.Fh
	}
	req := *in
	req.Fh = fh
	st := read(cancel, &req, out)
	if st.Ok() && out.Offset != in.Offset {
		w.park(parkKey{in.NodeId, out.Offset}, fh, in)
	} else {
		w.release(in, fh)
	}
	return st
}

func (w *noOpendir) unpark(k parkKey) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fh, ok := w.parked[k]
	if ok {
		w.drop(k)
	}
	return fh, ok
}

// drop forgets parked key k (w.mu held).
func (w *noOpendir) drop(k parkKey) {
	delete(w.parked, k)
	if w.nodes[k.node]--; w.nodes[k.node] <= 0 {
		delete(w.nodes, k.node)
	}
}

func (w *noOpendir) Forget(node, nlookup uint64) {
	var fhs []uint64
	w.mu.Lock()
	if w.nodes[node] > 0 {
		for k, fh := range w.parked {
			if k.node == node {
				w.drop(k)
				fhs = append(fhs, fh)
			}
		}
	}
	w.mu.Unlock()
	for _, fh := range fhs {
		w.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: node}, Fh: fh})
	}
	w.RawFileSystem.Forget(node, nlookup)
}

func (w *noOpendir) park(k parkKey, fh uint64, in *fuse.ReadIn) {
	var evict []parkKey
	var evictFh []uint64
	w.mu.Lock()
	if _, taken := w.parked[k]; taken {
		// two listings at the same place: keep the parked one
		w.mu.Unlock()
		w.release(in, fh)
		return
	}
	w.parked[k] = fh
	w.nodes[k.node]++
	w.order = append(w.order, k)
	for len(w.parked) > maxParked && len(w.order) > 0 {
		old := w.order[0]
		w.order = w.order[1:]
		if h, ok := w.parked[old]; ok {
			w.drop(old)
			evict, evictFh = append(evict, old), append(evictFh, h)
		}
	}
	if len(w.order) > 4*maxParked { // drop keys picked up since
		live := w.order[:0]
		for _, o := range w.order {
			if _, ok := w.parked[o]; ok {
				live = append(live, o)
			}
		}
		w.order = live
	}
	w.mu.Unlock()
	for i, e := range evict {
		w.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: e.node}, Fh: evictFh[i]})
	}
}

func (w *noOpendir) release(in *fuse.ReadIn, fh uint64) {
	w.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: fh})
}

// parkedHandles is how many listings wait for their next request (tests).
func (w *noOpendir) parkedHandles() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.parked)
}
