package fs

import (
	"fmt"
	"slices"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// fakeDirs is a bridge whose directories list n entries, 10 per reply,
// and counts its open handles.
type fakeDirs struct {
	fuse.RawFileSystem
	n        int
	next     uint64
	open     map[uint64]uint64 // fh -> node
	opens    int
	forgets  int
	releases int
}

func (f *fakeDirs) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	f.next++
	f.open[f.next] = in.NodeId
	f.opens++
	out.Fh = f.next
	return fuse.OK
}

func (f *fakeDirs) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if node, ok := f.open[in.Fh]; !ok || node != in.NodeId {
		panic(fmt.Sprintf("readdir of node %d with handle %d of node %d (open: %v)", in.NodeId, in.Fh, node, ok))
	}
	for i := int(in.Offset); i < f.n && i < int(in.Offset)+10; i++ {
		out.AddDirEntry(fuse.DirEntry{Name: fmt.Sprint(i), Mode: fuse.S_IFREG, Off: uint64(i + 1)})
	}
	return fuse.OK
}

func (f *fakeDirs) ReleaseDir(in *fuse.ReleaseIn) {
	if f.open[in.Fh] != in.NodeId {
		panic(fmt.Sprintf("release of handle %d as node %d", in.Fh, in.NodeId))
	}
	delete(f.open, in.Fh)
	f.releases++
}

func (f *fakeDirs) Forget(node, n uint64) {
	for _, nd := range f.open {
		if nd == node {
			panic(fmt.Sprintf("forget of node %d while the bridge still has a handle of it", node))
		}
	}
	f.forgets++
}

func listDir(t *testing.T, w *noOpendir, node uint64, upTo int) []string {
	t.Helper()
	var names []string
	off := uint64(0)
	for {
		out := fuse.NewDirEntryList(make([]byte, 4096), off)
		if st := w.ReadDirPlus(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: node}, Offset: off}, out); !st.Ok() {
			t.Fatalf("readdirplus: %v", st)
		}
		if out.Offset == off {
			return names
		}
		for i := off; i < out.Offset; i++ {
			names = append(names, fmt.Sprint(i))
		}
		off = out.Offset
		if upTo > 0 && len(names) >= upTo {
			return names
		}
	}
}

func TestNoOpendirHandles(t *testing.T) {
	f := &fakeDirs{n: 35, open: map[uint64]uint64{}}
	w := newNoOpendir(f, false)
	if st := w.OpenDir(nil, &fuse.OpenIn{}, &fuse.OpenOut{}); st != fuse.ENOSYS {
		t.Fatalf("OpenDir: %v, want ENOSYS", st)
	}

	// a listing of 4 replies and an end streams from one handle, released at the end
	if got := listDir(t, w, 5, 0); len(got) != 35 || f.opens != 1 || len(f.open) != 0 || w.parkedHandles() != 0 {
		t.Errorf("listing: %d names, %d opens, %d handles left, %d parked; want 35, 1, 0, 0", len(got), f.opens, len(f.open), w.parkedHandles())
	}

	// a listing abandoned half-way stays parked until its node is forgotten
	listDir(t, w, 6, 10)
	if w.parkedHandles() != 1 || len(f.open) != 1 {
		t.Fatalf("abandoned listing: %d parked, %d open, want 1 and 1", w.parkedHandles(), len(f.open))
	}
	w.Forget(7, 1) // another node: nothing released
	w.Forget(6, 1) // panics in fakeDirs if the handle were still open
	if w.parkedHandles() != 0 || len(f.open) != 0 || f.forgets != 2 {
		t.Errorf("after the forget: %d parked, %d open, %d forgets passed on; want 0, 0, 2", w.parkedHandles(), len(f.open), f.forgets)
	}

	// a read at an offset no handle waits for opens one (it seeks)
	out := fuse.NewDirEntryList(make([]byte, 4096), 20)
	w.ReadDirPlus(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: 8}, Offset: 20}, out)
	if out.Offset != 30 {
		t.Errorf("read at offset 20 ended at %d, want 30", out.Offset)
	}
	w.Forget(8, 1)

	// abandoned listings beyond maxParked are released, oldest first
	for node := uint64(100); node < 100+maxParked+10; node++ {
		listDir(t, w, node, 10)
	}
	if w.parkedHandles() != maxParked || len(f.open) != maxParked {
		t.Errorf("%d abandoned listings: %d parked, %d open; want %d", maxParked+10, w.parkedHandles(), len(f.open), maxParked)
	}
	for node := uint64(100); node < 100+maxParked+10; node++ {
		w.Forget(node, 1)
	}
	if len(f.open) != 0 {
		t.Errorf("%d handles left open", len(f.open))
	}
}

// Root offsets follow the names' order, and resuming after one skips
// exactly the names up to it.
func TestRootOffsets(t *testing.T) {
	var names []string
	for i := range 200 {
		h := make([]byte, 20)
		h[0], h[1], h[19] = byte(i*37), byte(i), byte(i*11)
		names = append(names, nixbase32.EncodeToString(h)+"-x")
	}
	sort.Strings(names)
	offs := make([]uint64, len(names))
	for i, n := range names {
		offs[i] = rootOff(n)
		if offs[i] == 0 {
			t.Fatalf("offset 0 for %s", n)
		}
	}
	if !slices.IsSorted(offs) || len(slices.Compact(slices.Clone(offs))) != len(offs) {
		t.Fatal("root offsets are not strictly increasing with the names")
	}
	for i, n := range names {
		a := afterOff(offs[i])
		if a <= n || (i+1 < len(names) && a >= names[i+1]) {
			t.Errorf("afterOff(rootOff(%s)) = %q: not between it and the next name", n, a)
		}
	}
}
