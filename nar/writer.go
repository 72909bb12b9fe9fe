package nar

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

const copyBufSize = 256 << 10

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// smallFile is the largest contents RegularBytes sends in the same Write
// as the surrounding tokens.
const smallFile = 32 << 10

// Writer streams a NAR to an io.Writer.
//
// The root node is written with exactly one of Regular, RegularBytes,
// Symlink or StartDirectory. Inside a directory, each entry is Entry(name)
// followed by exactly one node; EndDirectory closes the innermost directory.
// The tokens of each call are sent to the underlying writer in one Write
// (file contents are written separately), and nothing is buffered between
// calls. The Writer validates names, their order, symlink targets, the
// contents length and the structure; the first error (misuse or a failed
// write) is sticky and returned by every later call.
type Writer struct {
	w          io.Writer
	n          int64
	err        error
	buf        []byte
	started    bool     // the magic was written
	expectNode bool     // a node may be written now (root, or after Entry)
	done       bool     // the root node is complete
	dirs       []string // open directories: the last entry name of each
}

// NewWriter returns a Writer writing an archive to w. Magic is written
// together with the root node.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, expectNode: true, buf: make([]byte, 0, 512)}
}

// Written returns the number of bytes written to the underlying writer so
// far; after Close it is the size of the archive.
func (w *Writer) Written() int64 { return w.n }

// Regular writes a regular file node whose contents are exactly size bytes
// read from r. It fails with a "short read" error if r ends early (errors of
// r are returned as they are).
func (w *Writer) Regular(exec bool, size int64, r io.Reader) error {
	if err := w.startNode(); err != nil {
		return err
	}
	if size < 0 {
		return w.fail(fmt.Errorf("nar: negative file size %d", size))
	}
	w.appendRegularPrefix(exec, size)
	if err := w.flush(); err != nil {
		return err
	}
	bp := copyBufPool.Get().(*[]byte)
	err := w.copyN(r, size, *bp)
	copyBufPool.Put(bp)
	if err != nil {
		return w.fail(err)
	}
	w.buf = append(w.buf, zeroPad[:padLen(uint64(size))]...)
	return w.endNode()
}

// copyN copies exactly size bytes from r to the underlying writer.
func (w *Writer) copyN(r io.Reader, size int64, buf []byte) error {
	for remain := size; remain > 0; {
		b := buf
		if int64(len(b)) > remain {
			b = b[:remain]
		}
		n, rerr := r.Read(b)
		if n > 0 {
			if err := w.write(b[:n]); err != nil {
				return err
			}
			remain -= int64(n)
		}
		if rerr != nil {
			if rerr == io.EOF && remain > 0 {
				return fmt.Errorf("nar: short read: got %d of %d bytes of file contents", size-remain, size)
			}
			if rerr != io.EOF {
				return rerr
			}
		}
	}
	return nil
}

// RegularBytes writes a regular file node with the given contents.
func (w *Writer) RegularBytes(exec bool, data []byte) error {
	if err := w.startNode(); err != nil {
		return err
	}
	w.appendRegularPrefix(exec, int64(len(data)))
	if len(data) > smallFile {
		if err := w.flush(); err != nil {
			return err
		}
		if err := w.write(data); err != nil {
			return w.fail(err)
		}
	} else {
		w.buf = append(w.buf, data...)
	}
	w.buf = append(w.buf, zeroPad[:padLen(uint64(len(data)))]...)
	return w.endNode()
}

// Symlink writes a symlink node. The target must be non-empty, at most
// MaxTargetLen bytes and free of NUL bytes.
func (w *Writer) Symlink(target string) error {
	if err := w.startNode(); err != nil {
		return err
	}
	if msg := checkTarget(target); msg != "" {
		return w.fail(errors.New("nar: " + msg))
	}
	w.buf = appendStr(w.buf, "(")
	w.buf = appendStr(w.buf, "type")
	w.buf = appendStr(w.buf, "symlink")
	w.buf = appendStr(w.buf, "target")
	w.buf = appendStr(w.buf, target)
	return w.endNode()
}

// StartDirectory starts a directory node. Its entries follow as Entry calls,
// each followed by one node, and EndDirectory closes it.
func (w *Writer) StartDirectory() error {
	if err := w.startNode(); err != nil {
		return err
	}
	w.buf = appendStr(w.buf, "(")
	w.buf = appendStr(w.buf, "type")
	w.buf = appendStr(w.buf, "directory")
	w.dirs = append(w.dirs, "")
	return w.flush()
}

// Entry starts an entry named name in the innermost directory; exactly one
// node must follow. The name must be valid and sort bytewise after the
// previous entry name of the directory.
func (w *Writer) Entry(name string) error {
	if w.err != nil {
		return w.err
	}
	if len(w.dirs) == 0 {
		return w.fail(errors.New("nar: Entry outside a directory"))
	}
	if w.expectNode {
		return w.fail(fmt.Errorf("nar: Entry(%q) before the node of entry %q", name, w.dirs[len(w.dirs)-1]))
	}
	if msg := checkName(name); msg != "" {
		return w.fail(errors.New("nar: " + msg))
	}
	if prev := w.dirs[len(w.dirs)-1]; prev != "" && name <= prev {
		if name == prev {
			return w.fail(fmt.Errorf("nar: duplicate entry name %q", name))
		}
		return w.fail(fmt.Errorf("nar: names not sorted (%q after %q)", name, prev))
	}
	if len(w.dirs) > MaxDepth {
		return w.fail(fmt.Errorf("nar: directory nesting deeper than %d", MaxDepth))
	}
	w.dirs[len(w.dirs)-1] = name
	w.buf = appendStr(w.buf, "entry")
	w.buf = appendStr(w.buf, "(")
	w.buf = appendStr(w.buf, "name")
	w.buf = appendStr(w.buf, name)
	w.buf = appendStr(w.buf, "node")
	w.expectNode = true
	return w.flush()
}

// EndDirectory closes the innermost directory (and the entry whose node it
// is, if any).
func (w *Writer) EndDirectory() error {
	if w.err != nil {
		return w.err
	}
	if len(w.dirs) == 0 || w.expectNode {
		if len(w.dirs) > 0 {
			return w.fail(fmt.Errorf("nar: EndDirectory after Entry(%q) without its node", w.dirs[len(w.dirs)-1]))
		}
		return w.fail(errors.New("nar: EndDirectory without an open directory"))
	}
	w.dirs = w.dirs[:len(w.dirs)-1]
	return w.endNode()
}

// Close checks that the archive is complete. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if !w.done {
		if !w.started {
			return w.fail(errors.New("nar: Close without a root node"))
		}
		return w.fail(errors.New("nar: Close with an incomplete archive"))
	}
	return nil
}

// startNode checks a node may be written now and queues the magic before
// the root node.
func (w *Writer) startNode() error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return w.fail(errors.New("nar: node written after the root node was complete"))
	}
	if !w.expectNode {
		return w.fail(errors.New("nar: node in a directory without Entry"))
	}
	w.expectNode = false
	if !w.started {
		w.started = true
		w.buf = appendStr(w.buf, Magic)
	}
	return nil
}

// endNode closes the current node, and the entry it belongs to, if any.
func (w *Writer) endNode() error {
	w.buf = appendStr(w.buf, ")")
	if len(w.dirs) == 0 {
		w.done = true
	} else {
		w.buf = appendStr(w.buf, ")")
	}
	return w.flush()
}

func (w *Writer) appendRegularPrefix(exec bool, size int64) {
	w.buf = appendStr(w.buf, "(")
	w.buf = appendStr(w.buf, "type")
	w.buf = appendStr(w.buf, "regular")
	if exec {
		w.buf = appendStr(w.buf, "executable")
		w.buf = appendStr(w.buf, "")
	}
	w.buf = appendStr(w.buf, "contents")
	w.buf = append(w.buf, byte(size), byte(size>>8), byte(size>>16), byte(size>>24),
		byte(size>>32), byte(size>>40), byte(size>>48), byte(size>>56))
}

// flush writes the queued tokens.
func (w *Writer) flush() error {
	err := w.write(w.buf)
	w.buf = w.buf[:0]
	if err != nil {
		return w.fail(err)
	}
	return nil
}

func (w *Writer) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	return err
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}
