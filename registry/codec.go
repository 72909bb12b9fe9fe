package registry

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Every value encoding starts with a version byte so that a later schema can
// migrate values one by one.
const (
	pathInfoV1  = 1
	directoryV1 = 1
)

// NodeType is the type of a node in an item's tree.
type NodeType uint8

const (
	TypeRegular   NodeType = 1
	TypeDirectory NodeType = 2
	TypeSymlink   NodeType = 3
)

func (t NodeType) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("NodeType(%d)", uint8(t))
}

// Digest is a SHA-256: a blob key (sha256 of a single file's NAR) or the
// digest of an encoded Directory record.
type Digest [32]byte

// Node is one node of an item's tree (blob mode). For a regular file Key is
// the blob key and Size the file size; for a directory Key is the digest of
// its Directory record; for a symlink Target is the link target.
type Node struct {
	Type       NodeType
	Executable bool
	Size       int64
	Key        Digest
	Target     string
}

// Entry is a named node inside a Directory.
type Entry struct {
	Name string
	Node
}

// Directory lists a directory's entries, sorted bytewise by name.
type Directory struct {
	Entries []Entry
}

// PathInfo is what the registry knows about one valid path.
type PathInfo struct {
	Path             string // base name "<hash32>-<name>"
	NarHash          Digest // sha256 of the item's NAR
	NarSize          int64
	References       []string // base names, sorted; filled in by queries
	Deriver          string   // base name of the deriver, or ""
	RegistrationTime time.Time
	CA               string // content address, e.g. "fixed:r:sha256:<nix32>", or ""
	Root             Node   // blob mode: the item's root node; zero in disk mode
}

var errCorrupt = errors.New("registry: corrupt value")

// validName is the NAR rule for entry names.
func validName(n string) bool {
	return n != "" && n != "." && n != ".." && !strings.ContainsAny(n, "/\x00")
}

// ---- keys ----

func refKey(from, to string) []byte {
	k := make([]byte, 0, len(from)+1+len(to))
	k = append(k, from...)
	k = append(k, 0)
	return append(k, to...)
}

func refPrefix(from string) []byte { return append([]byte(from), 0) }

// ---- small encoders ----

type enc struct{ b []byte }

func (e *enc) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) bytes(p []byte)   { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *enc) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }

type dec struct {
	b   []byte
	err error
}

func (d *dec) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
}

func (d *dec) byte1() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *dec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n != len(binary.AppendUvarint(nil, v)) { // minimal encodings only: one value, one digest
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || n != len(binary.AppendVarint(nil, v)) {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) raw(n int) []byte {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.fail()
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) str() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	return string(d.raw(int(n)))
}

func (d *dec) digest() (out Digest) {
	copy(out[:], d.raw(len(out)))
	return out
}

// ---- nodes ----

// node type tags on disk (the executable bit is folded into the tag).
const (
	tagRegular    = 1
	tagExecutable = 2
	tagDirectory  = 3
	tagSymlink    = 4
)

func (e *enc) node(n Node) {
	switch n.Type {
	case TypeRegular:
		if n.Executable {
			e.b = append(e.b, tagExecutable)
		} else {
			e.b = append(e.b, tagRegular)
		}
		e.uvarint(uint64(n.Size))
		e.b = append(e.b, n.Key[:]...)
	case TypeDirectory:
		e.b = append(e.b, tagDirectory)
		e.b = append(e.b, n.Key[:]...)
	case TypeSymlink:
		e.b = append(e.b, tagSymlink)
		e.str(n.Target)
	default:
		e.b = append(e.b, 0)
	}
}

func (d *dec) node() (n Node) {
	switch tag := d.byte1(); tag {
	case tagRegular, tagExecutable:
		n.Type = TypeRegular
		n.Executable = tag == tagExecutable
		n.Size = int64(d.uvarint())
		n.Key = d.digest()
	case tagDirectory:
		n.Type = TypeDirectory
		n.Key = d.digest()
	case tagSymlink:
		n.Type = TypeSymlink
		n.Target = d.str()
	case 0:
		// no node (disk mode items)
	default:
		d.fail()
	}
	return n
}

// ---- PathInfo ----

func encodePathInfo(pi *PathInfo) []byte {
	e := enc{b: make([]byte, 0, 128)}
	e.b = append(e.b, pathInfoV1)
	e.b = append(e.b, pi.NarHash[:]...)
	e.uvarint(uint64(pi.NarSize))
	e.varint(pi.RegistrationTime.Unix())
	e.str(pi.Deriver)
	e.str(pi.CA)
	e.node(pi.Root)
	return e.b
}

// narSizeOf reads only the NAR size of an encoded PathInfo.
func narSizeOf(name string, v []byte) (int64, error) {
	d := dec{b: v}
	if d.byte1() != pathInfoV1 {
		return 0, fmt.Errorf("%w: path %s: unknown encoding version", errCorrupt, name)
	}
	d.digest()
	size := int64(d.uvarint())
	if d.err != nil {
		return 0, fmt.Errorf("%w: path %s", d.err, name)
	}
	return size, nil
}

func decodePathInfo(name string, v []byte) (*PathInfo, error) {
	d := dec{b: v}
	if d.byte1() != pathInfoV1 {
		return nil, fmt.Errorf("%w: path %s: unknown encoding version", errCorrupt, name)
	}
	pi := &PathInfo{Path: name}
	pi.NarHash = d.digest()
	pi.NarSize = int64(d.uvarint())
	pi.RegistrationTime = time.Unix(d.varint(), 0).UTC()
	pi.Deriver = d.str()
	pi.CA = d.str()
	pi.Root = d.node()
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: path %s", d.err, name)
	}
	return pi, nil
}

// ---- Directory ----

// EncodeDirectory returns the canonical encoding of d and its digest. Equal
// directories encode equally, so they are stored once.
func EncodeDirectory(d *Directory) ([]byte, Digest) {
	e := enc{b: make([]byte, 0, 16+len(d.Entries)*48)}
	e.b = append(e.b, directoryV1)
	e.uvarint(uint64(len(d.Entries)))
	for i := range d.Entries {
		e.str(d.Entries[i].Name)
		e.node(d.Entries[i].Node)
	}
	return e.b, sha256.Sum256(e.b)
}

// DecodeDirectory decodes a Directory record.
func DecodeDirectory(v []byte) (*Directory, error) {
	d := dec{b: v}
	if d.byte1() != directoryV1 {
		return nil, fmt.Errorf("%w: directory: unknown encoding version", errCorrupt)
	}
	n := d.uvarint()
	if n > uint64(len(v)) {
		return nil, fmt.Errorf("%w: directory: bad entry count", errCorrupt)
	}
	dir := &Directory{Entries: make([]Entry, 0, n)}
	prev := ""
	for i := uint64(0); i < n && d.err == nil; i++ {
		name := d.str()
		node := d.node()
		if d.err == nil && (!validName(name) || (i > 0 && name <= prev) || node.Type == 0) {
			d.fail()
		}
		prev = name
		dir.Entries = append(dir.Entries, Entry{Name: name, Node: node})
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: directory", d.err)
	}
	return dir, nil
}
