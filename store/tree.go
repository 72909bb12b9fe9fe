package store

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

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

	key  cas.Key // blob key of a regular file, when known
	copy string  // where the file's bytes were written (disk mode staging copy or blob), for re-reading
	data []byte  // a small file's bytes, held until the NAR hasher took them
	// recheck: copy is the source itself, re-read by the NAR hasher, which
	// checks that it still hashes to key
	recheck bool
	done    chan struct{}
	err     error
}

// walkSource lstat-walks a source tree in NAR order. It refuses devices,
// sockets and FIFOs before anything is written.
func walkSource(src string) (root *node, files []*node, err error) {
	var walk func(abs, rel, name string, fi fs.FileInfo) (*node, error)
	walk = func(abs, rel, name string, fi fs.FileInfo) (*node, error) {
		n := &node{name: name, rel: rel, src: abs}
		switch m := fi.Mode(); {
		case m.IsRegular():
			n.typ, n.exec, n.size = nar.TypeRegular, m&0o100 != 0, fi.Size()
			files = append(files, n)
		case m&fs.ModeSymlink != 0:
			t, err := os.Readlink(abs)
			if err != nil {
				return nil, err
			}
			if t == "" {
				return nil, fmt.Errorf("%s: empty symlink target: %w", abs, ErrBadInput)
			}
			n.typ, n.target = nar.TypeSymlink, t
		case m.IsDir():
			n.typ = nar.TypeDirectory
			ents, err := os.ReadDir(abs) // sorted by name, bytewise
			if err != nil {
				return nil, err
			}
			n.kids = make([]*node, 0, len(ents))
			for _, e := range ents {
				cfi, err := e.Info()
				if err != nil {
					return nil, err
				}
				crel := e.Name()
				if rel != "" {
					crel = rel + "/" + e.Name()
				}
				k, err := walk(filepath.Join(abs, e.Name()), crel, e.Name(), cfi)
				if err != nil {
					return nil, err
				}
				n.kids = append(n.kids, k)
			}
		default:
			return nil, fmt.Errorf("%s: %w (%s)", abs, ErrUnsupported, typeName(m))
		}
		return n, nil
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return nil, nil, err
	}
	root, err = walk(src, "", "", fi)
	return root, files, err
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

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
