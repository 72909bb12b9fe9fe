package store

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/registry"
)

// node is one node of an item being added, in NAR order.
type node struct {
	name   string // entry name ("" for the root)
	rel    string // path below the item root ("" for the root)
	typ    nar.Type
	exec   bool
	size   int64
	target string  // symlink
	kids   []*node // directory entries, sorted bytewise
	src    string  // source file (add)

	key  cas.Key  // blob key of a regular file, when known
	copy string   // where the file's bytes were written (disk mode staging copy or blob), for re-reading
	data []byte   // a small file's bytes, held until the NAR hasher took them
	buf  *fileBuf // add: the recycled buffer data is in
	// recheck: copy is the source itself, re-read by the NAR hasher, which
	// checks that it still hashes to key
	recheck bool
	done    chan struct{}
	err     error

	// srcFD is the source file, opened ahead of its worker by prefetch
	// (valid while opened is set; whoever takes it closes it).
	srcFD  int
	opened bool
}

// Prefetch sizes: a file read whole into memory is prefetched whole, a larger
// one only its head (the kernel's readahead follows its sequential read).
const bigPrefetch = 2 << 20

// prefetch opens a regular file's source before a worker takes it and asks
// the kernel to start reading it (posix_fadvise WILLNEED submits the reads
// and returns). On a cold cache a tree of small files is one synchronous
// device read per file; with reads in flight for the files ahead of the
// workers the device works on many at once and merges neighbours (the Go
// corpus's 15k files: 1.2 s of reads become 0.6 s). The descriptor goes to
// the worker, so the open costs no extra system call. A failed open is left
// to the worker's own, which reports it.
func (n *node) prefetch() {
	fd, err := unix.Open(n.src, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	if n.size > 0 {
		ahead := n.size
		if ahead > smallFile {
			ahead = bigPrefetch
		}
		unix.Fadvise(fd, 0, ahead, unix.FADV_WILLNEED) // only advice: an error changes nothing
	}
	n.srcFD, n.opened = fd, true
}

// openSrc returns a descriptor of the source, the prefetched one if there is
// one; the caller closes it.
func (n *node) openSrc() (int, error) {
	if n.opened {
		n.opened = false
		return n.srcFD, nil
	}
	fd, err := unix.Open(n.src, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: n.src, Err: err}
	}
	return fd, nil
}

// openSrcFile is openSrc as an *os.File (for large files, streamed).
func (n *node) openSrcFile() (*os.File, error) {
	fd, err := n.openSrc()
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), n.src), nil
}

// closeSrc closes a prefetched descriptor no worker took.
func (n *node) closeSrc() {
	if n.opened {
		unix.Close(n.srcFD)
		n.opened = false
	}
}

// walkSource lstat-walks a source tree in NAR order. It refuses devices,
// sockets and FIFOs before anything is written.
//
// Directories are read by up to walkers goroutines at once: on a cold cache
// a tree's walk is a chain of small metadata reads, and one reader leaves
// the device idle between them. Each entry is stat'ed relative to its
// directory's descriptor (no path walk from the root per entry). The error
// reported is the first in NAR order, as a serial walk would report it.
func walkSource(src string) (root *node, files []*node, err error) {
	fi, err := os.Lstat(src)
	if err != nil {
		return nil, nil, err
	}
	root = &node{src: src}
	w := &walker{slots: make(chan struct{}, walkers)}
	w.visit(root, fi)
	w.wg.Wait()
	var collect func(n *node) error
	collect = func(n *node) error {
		if n.err != nil {
			return n.err
		}
		switch n.typ {
		case nar.TypeRegular:
			files = append(files, n)
		case nar.TypeDirectory:
			for _, k := range n.kids {
				if err := collect(k); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := collect(root); err != nil {
		return nil, nil, err
	}
	return root, files, nil
}

// walkers is the number of directories walkSource reads at once.
const walkers = 8

type walker struct {
	slots chan struct{}
	wg    sync.WaitGroup
}

// visit fills in n (whose name, rel and src are set) from fi; a directory's
// entries are read by another goroutine when a slot is free, here otherwise.
func (w *walker) visit(n *node, fi fs.FileInfo) {
	switch m := fi.Mode(); {
	case m.IsRegular():
		n.typ, n.exec, n.size = nar.TypeRegular, m&0o100 != 0, fi.Size()
	case m&fs.ModeSymlink != 0:
		n.typ = nar.TypeSymlink
		n.target, n.err = os.Readlink(n.src)
		if n.err == nil && n.target == "" {
			n.err = fmt.Errorf("%s: empty symlink target: %w", n.src, ErrBadInput)
		}
	case m.IsDir():
		n.typ = nar.TypeDirectory
		select {
		case w.slots <- struct{}{}:
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				w.readDir(n)
				<-w.slots
			}()
		default:
			w.readDir(n)
		}
	default:
		n.err = fmt.Errorf("%s: %w (%s)", n.src, ErrUnsupported, typeName(m))
	}
}

// readDir reads directory n's entries, sorted bytewise, and visits them.
func (w *walker) readDir(n *node) {
	fd, err := unix.Open(n.src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		n.err = &os.PathError{Op: "open", Path: n.src, Err: err}
		return
	}
	d := os.NewFile(uintptr(fd), n.src)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		n.err = err
		return
	}
	slices.Sort(names)
	n.kids = make([]*node, len(names))
	for i, name := range names {
		k := &node{name: name, rel: name, src: filepath.Join(n.src, name)}
		if n.rel != "" {
			k.rel = n.rel + "/" + name
		}
		n.kids[i] = k
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			k.err = &os.PathError{Op: "lstat", Path: k.src, Err: err}
			continue
		}
		w.visit(k, statInfo{name, &st})
	}
}

// statInfo is the fs.FileInfo of a unix.Stat_t (the fields visit uses).
type statInfo struct {
	name string
	st   *unix.Stat_t
}

func (i statInfo) Name() string       { return i.name }
func (i statInfo) Size() int64        { return i.st.Size }
func (i statInfo) ModTime() time.Time { return time.Unix(i.st.Mtim.Unix()) }
func (i statInfo) IsDir() bool        { return i.Mode().IsDir() }
func (i statInfo) Sys() any           { return i.st }
func (i statInfo) Mode() fs.FileMode {
	m := fs.FileMode(i.st.Mode & 0o777)
	switch i.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	return m
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return m.Type().String()
}

// treeRecords builds the registry directory records of a tree (blob mode),
// bottom-up, and returns the root node as the registry stores it.
func treeRecords(n *node, dirs map[registry.Digest][]byte) registry.Node {
	switch n.typ {
	case nar.TypeRegular:
		return registry.Node{Type: registry.TypeRegular, Executable: n.exec, Size: n.size, Key: registry.Digest(n.key)}
	case nar.TypeSymlink:
		return registry.Node{Type: registry.TypeSymlink, Target: n.target}
	}
	d := &registry.Directory{Entries: make([]registry.Entry, len(n.kids))}
	for i, k := range n.kids {
		d.Entries[i] = registry.Entry{Name: k.name, Node: treeRecords(k, dirs)}
	}
	enc, digest := registry.EncodeDirectory(d)
	dirs[digest] = enc
	return registry.Node{Type: registry.TypeDirectory, Key: digest}
}
