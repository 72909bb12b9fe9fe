package nar

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

const readBufSize = 64 << 10

// Reader states: what Next has to do before it can return the next header.
const (
	stateMagic   = iota // nothing read yet
	stateFile           // a regular file's header was returned; contents follow
	stateSymlink        // a symlink's header was returned; its ")" follows
	stateDir            // inside a directory: "entry" or ")" follows
	stateDone           // the root node is complete and the stream is at EOF
)

// dirFrame is an open directory.
type dirFrame struct {
	path string // the directory's path
	prev string // the last entry name seen, "" before the first entry
}

// Reader is a strict, pull-style NAR parser. It runs no goroutines and
// allocates only the returned Header and its path.
//
// Next returns the nodes in archive order (pre-order: a directory's header
// comes before its entries, which come in name order). After a regular
// file's header, Read returns its contents. Any error is sticky: once Next or
// Read failed, they keep returning that error.
type Reader struct {
	br    *bufio.Reader
	off   int64
	err   error
	state int
	stack []dirFrame

	path    string // path of the current node (for errors)
	remain  int64  // contents bytes not yet consumed
	pad     int    // zero bytes following the contents
	padDone bool   // the padding after the contents was checked

	pathBuf []byte
	scratch [MaxTargetLen + 1]byte

	embedded bool // the archive is followed by other data (NewEmbeddedReader)
}

// NewReader returns a Reader reading an archive from r. r is wrapped in a
// 64 KiB bufio.Reader (unless it already is one at least that large), so
// the Reader may consume bytes from r beyond the end of the archive; it
// requires the archive to be followed by EOF anyway.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, readBufSize)}
}

// NewEmbeddedReader returns a Reader for an archive embedded in a larger
// stream, such as a `nix-store --export` bundle: it reads from br directly,
// consumes exactly the archive's bytes, and Next returns io.EOF as soon as
// the root node is complete, whatever follows.
func NewEmbeddedReader(br *bufio.Reader) *Reader {
	return &Reader{br: br, embedded: true}
}

// Offset returns the number of archive bytes consumed so far.
func (r *Reader) Offset() int64 { return r.off }

// Next advances to the next node and returns its header. Unread contents of
// the previous regular file are skipped (their padding is still checked).
// It returns io.EOF once the root node is complete and the underlying
// stream is at EOF; trailing bytes are an *Error.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	return h, nil
}

// Read reads the contents of the current regular file. It returns io.EOF at
// the end of the contents, and for directories and symlinks. The padding
// after the contents is checked by the Read that consumes their last byte.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.state != stateFile {
		return 0, io.EOF
	}
	if r.remain == 0 {
		if err := r.finishPad(); err != nil {
			r.err = err
			return 0, err
		}
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	n, err := r.br.Read(p)
	r.off += int64(n)
	r.remain -= int64(n)
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = r.truncated(r.off)
		}
		r.err = err
		return n, err
	}
	if r.remain == 0 {
		if err := r.finishPad(); err != nil {
			r.err = err
			return n, err
		}
	}
	return n, nil
}

func (r *Reader) next() (*Header, error) {
	switch r.state {
	case stateMagic:
		if err := r.readMagic(); err != nil {
			return nil, err
		}
		return r.parseNode("")
	case stateFile:
		if err := r.skipContents(); err != nil {
			return nil, err
		}
		start := r.off
		tag, err := r.readTag()
		if err != nil {
			return nil, err
		}
		if string(tag) != ")" {
			return nil, r.errorf(start, r.path, "expected \")\" after contents, got %q", tag)
		}
		return r.endNode(r.path)
	case stateSymlink:
		if err := r.expect(")", r.path); err != nil {
			return nil, err
		}
		return r.endNode(r.path)
	case stateDir:
		return r.dirNext()
	}
	return nil, io.EOF
}

// endNode is called after the ")" of the node at path was read.
func (r *Reader) endNode(path string) (*Header, error) {
	if len(r.stack) == 0 {
		r.state = stateDone
		if r.embedded {
			return nil, io.EOF
		}
		switch _, err := r.br.Peek(1); err {
		case io.EOF:
			return nil, io.EOF
		case nil:
			return nil, r.errorf(r.off, "", "trailing data after NAR")
		default:
			return nil, err
		}
	}
	// The node was an entry's node: close the entry.
	if err := r.expect(")", path); err != nil {
		return nil, err
	}
	return r.dirNext()
}

// dirNext parses the next "entry" or the closing ")" of the innermost
// directory.
func (r *Reader) dirNext() (*Header, error) {
	top := &r.stack[len(r.stack)-1]
	r.path = top.path
	start := r.off
	tag, err := r.readTag()
	if err != nil {
		return nil, err
	}
	switch string(tag) {
	case ")":
		dir := top.path
		r.stack = r.stack[:len(r.stack)-1]
		return r.endNode(dir)
	case "entry":
	default:
		return nil, r.errorf(start, top.path, "expected \"entry\" or \")\" in directory, got %q", tag)
	}
	if len(r.stack) > MaxDepth {
		return nil, r.errorf(start, top.path, "directory nesting deeper than %d", MaxDepth)
	}
	if err := r.expect("(", top.path); err != nil {
		return nil, err
	}
	if err := r.expect("name", top.path); err != nil {
		return nil, err
	}
	start = r.off
	name, err := r.readStr(MaxNameLen, top.path, "entry name")
	if err != nil {
		return nil, err
	}
	if msg := checkName(name); msg != "" {
		return nil, r.errorf(start, joinPath(top.path, string(name)), "%s", msg)
	}
	// One allocation for the path; the name shares its memory.
	r.pathBuf = append(r.pathBuf[:0], top.path...)
	if top.path != "" {
		r.pathBuf = append(r.pathBuf, '/')
	}
	r.pathBuf = append(r.pathBuf, name...)
	path := string(r.pathBuf)
	cur := path[len(path)-len(name):]
	if top.prev != "" && cur <= top.prev {
		if cur == top.prev {
			return nil, r.errorf(start, path, "duplicate entry name %q", cur)
		}
		return nil, r.errorf(start, path, "names not sorted (%q after %q)", cur, top.prev)
	}
	top.prev = cur
	if err := r.expect("node", path); err != nil {
		return nil, err
	}
	return r.parseNode(path)
}

// parseNode parses a node up to its header.
func (r *Reader) parseNode(path string) (*Header, error) {
	r.path = path
	if err := r.expect("(", path); err != nil {
		return nil, err
	}
	if err := r.expect("type", path); err != nil {
		return nil, err
	}
	start := r.off
	tag, err := r.readTag()
	if err != nil {
		return nil, err
	}
	switch string(tag) {
	case "regular":
		return r.parseRegular(path)
	case "symlink":
		if err := r.expect("target", path); err != nil {
			return nil, err
		}
		start := r.off
		target, err := r.readStr(MaxTargetLen, path, "symlink target")
		if err != nil {
			return nil, err
		}
		if msg := checkTarget(target); msg != "" {
			return nil, r.errorf(start, path, "%s", msg)
		}
		r.state = stateSymlink
		return &Header{Path: path, Type: TypeSymlink, LinkTarget: string(target)}, nil
	case "directory":
		r.stack = append(r.stack, dirFrame{path: path})
		r.state = stateDir
		return &Header{Path: path, Type: TypeDirectory}, nil
	}
	return nil, r.errorf(start, path, "unknown node type %q", tag)
}

func (r *Reader) parseRegular(path string) (*Header, error) {
	start := r.off
	tag, err := r.readTag()
	if err != nil {
		return nil, err
	}
	exec := false
	if string(tag) == "executable" {
		exec = true
		start = r.off
		marker, err := r.readStr(MaxTagLen, path, "executable marker")
		if err != nil {
			return nil, err
		}
		if len(marker) != 0 {
			return nil, r.errorf(start, path, "executable marker must be empty, got %q", marker)
		}
		start = r.off
		if tag, err = r.readTag(); err != nil {
			return nil, err
		}
	}
	if string(tag) != "contents" {
		if exec {
			return nil, r.errorf(start, path, "expected \"contents\", got %q", tag)
		}
		return nil, r.errorf(start, path, "expected \"executable\" or \"contents\", got %q", tag)
	}
	start = r.off
	size, err := r.readUint64()
	if err != nil {
		return nil, err
	}
	if size > math.MaxInt64-8 {
		return nil, r.errorf(start, path, "contents size %d too large", size)
	}
	r.state = stateFile
	r.remain = int64(size)
	r.pad = padLen(size)
	r.padDone = false
	return &Header{Path: path, Type: TypeRegular, Executable: exec, Size: int64(size)}, nil
}

// skipContents discards the unread contents of the current file and checks
// the padding.
func (r *Reader) skipContents() error {
	for r.remain > 0 {
		n := int(min(r.remain, readBufSize))
		d, err := r.br.Discard(n)
		r.off += int64(d)
		r.remain -= int64(d)
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return r.truncated(r.off)
			}
			return err
		}
	}
	return r.finishPad()
}

// finishPad checks and consumes the padding after the contents.
func (r *Reader) finishPad() error {
	if r.padDone {
		return nil
	}
	if r.pad > 0 {
		b, err := r.peek(r.pad, r.off)
		if err != nil {
			return err
		}
		for i, c := range b {
			if c != 0 {
				return r.errorf(r.off+int64(i), r.path, "non-zero padding after contents")
			}
		}
		r.discard(r.pad)
	}
	r.padDone = true
	return nil
}

// readMagic reads and checks the archive magic.
func (r *Reader) readMagic() error {
	// An input that does not start like a NAR is "not a NAR", even when it
	// is too short to hold the whole magic.
	head, _ := r.br.Peek(8 + len(Magic))
	if !bytes.HasPrefix(appendStr(nil, Magic), head) {
		return r.errorf(0, "", "bad magic (not a NAR)")
	}
	b, err := r.peek(8+len(Magic)+padLen(uint64(len(Magic))), 0)
	if err != nil {
		return err
	}
	if binary.LittleEndian.Uint64(b) != uint64(len(Magic)) || string(b[8:8+len(Magic)]) != Magic {
		return r.errorf(0, "", "bad magic (not a NAR)")
	}
	for _, c := range b[8+len(Magic):] {
		if c != 0 {
			return r.errorf(0, "", "non-zero padding in magic")
		}
	}
	r.discard(len(b))
	return nil
}

// expect reads a tag and checks it equals want.
func (r *Reader) expect(want, path string) error {
	start := r.off
	tag, err := r.readTag()
	if err != nil {
		return err
	}
	if string(tag) != want {
		return r.errorf(start, path, "expected %q, got %q", want, tag)
	}
	return nil
}

// readTag reads a structural token of at most MaxTagLen bytes.
func (r *Reader) readTag() ([]byte, error) {
	return r.readStr(MaxTagLen, r.path, "token")
}

// readStr reads str(s) with len(s) <= max into r.scratch. The result is
// valid until the next read.
func (r *Reader) readStr(max int, path, what string) ([]byte, error) {
	start := r.off
	n, err := r.readUint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, r.errorf(start, path, "%s too long (%d bytes, max %d)", what, n, max)
	}
	l := int(n)
	b, err := r.peek(l+padLen(n), start)
	if err != nil {
		return nil, err
	}
	for i, c := range b[l:] {
		if c != 0 {
			return nil, r.errorf(start, path, "non-zero padding in %s at offset %d", what, r.off+int64(l+i))
		}
	}
	s := r.scratch[:copy(r.scratch[:], b[:l])]
	r.discard(len(b))
	return s, nil
}

// readUint64 reads a little-endian u64.
func (r *Reader) readUint64() (uint64, error) {
	b, err := r.peek(8, r.off)
	if err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint64(b)
	r.discard(8)
	return v, nil
}

// peek returns the next n bytes without consuming them; running out of
// input is a truncation error reported at offset start.
func (r *Reader) peek(n int, start int64) ([]byte, error) {
	b, err := r.br.Peek(n)
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, r.truncated(start)
		}
		return nil, err
	}
	return b, nil
}

// discard consumes n bytes that were peeked.
func (r *Reader) discard(n int) {
	r.br.Discard(n) //nolint:errcheck // the bytes are buffered
	r.off += int64(n)
}

func (r *Reader) truncated(off int64) error {
	return &Error{Offset: off, Path: r.path, Msg: "unexpected end of archive", err: io.ErrUnexpectedEOF}
}

func (r *Reader) errorf(off int64, path, format string, args ...any) error {
	return &Error{Offset: off, Path: path, Msg: fmt.Sprintf(format, args...)}
}
