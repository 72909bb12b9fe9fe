package nar

import (
	"io"
	"strings"
)

// Copy re-encodes the archive read from r to w, validating it strictly, and
// returns the number of bytes written. Since only canonical archives are
// accepted, a successful Copy writes exactly the bytes it read. Output is
// streamed: on error, w has received a prefix of the archive.
func Copy(w io.Writer, r io.Reader) (int64, error) {
	nr := NewReader(r)
	nw := NewWriter(w)
	open := 0 // open directories
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nw.Written(), err
		}
		if h.Path != "" {
			depth := strings.Count(h.Path, "/") + 1
			for ; open > depth; open-- {
				if err := nw.EndDirectory(); err != nil {
					return nw.Written(), err
				}
			}
			if err := nw.Entry(h.Path[strings.LastIndexByte(h.Path, '/')+1:]); err != nil {
				return nw.Written(), err
			}
		}
		switch h.Type {
		case TypeRegular:
			err = nw.Regular(h.Executable, h.Size, nr)
		case TypeSymlink:
			err = nw.Symlink(h.LinkTarget)
		case TypeDirectory:
			err = nw.StartDirectory()
			open++
		}
		if err != nil {
			return nw.Written(), err
		}
	}
	for ; open > 0; open-- {
		if err := nw.EndDirectory(); err != nil {
			return nw.Written(), err
		}
	}
	return nw.Written(), nw.Close()
}
