package nar

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// Magic is the string every NAR starts with.
const Magic = "nix-archive-1"

// Limits enforced by both Reader and Writer (they follow Nix's parser).
const (
	// MaxTagLen is the longest structural token ("(", "type", "directory", ...)
	// the reader is willing to read; longer tokens are rejected before they
	// are buffered.
	MaxTagLen = 32
	// MaxNameLen is the longest directory entry name (NAME_MAX on Linux).
	MaxNameLen = 255
	// MaxTargetLen is the longest symlink target (PATH_MAX minus the NUL).
	MaxTargetLen = 4095
	// MaxDepth is the largest number of path components of any node: the
	// root is at depth 0, "a" at depth 1, "a/b" at depth 2, and so on.
	MaxDepth = 256
)

// Type is the type of a NAR node.
type Type uint8

// Node types.
const (
	TypeRegular Type = iota + 1
	TypeDirectory
	TypeSymlink
)

// String returns the NAR spelling of the type ("regular", "directory",
// "symlink").
func (t Type) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return "Type(" + strconv.Itoa(int(t)) + ")"
}

// Header describes one node of an archive.
type Header struct {
	// Path is the node's path relative to the root, slash-separated: ""
	// for the root node itself, "a/b" for entry "b" of directory "a".
	Path string
	// Type is the node type.
	Type Type
	// Executable is set for executable regular files.
	Executable bool
	// Size is the length of a regular file's contents (0 otherwise).
	Size int64
	// LinkTarget is a symlink's target (empty otherwise).
	LinkTarget string
}

// Error is the error returned for every malformed archive. Errors of the
// underlying io.Reader other than end-of-file are returned unwrapped, so
// errors.As(err, new(*nar.Error)) tells a bad archive from a failed read.
type Error struct {
	// Offset is the byte offset in the stream where the offending token
	// (or, for file contents, the offending byte) starts.
	Offset int64
	// Path is the entry involved, "" for the root node.
	Path string
	// Msg describes the problem.
	Msg string

	err error // wrapped cause (io.ErrUnexpectedEOF for truncation)
}

// Error formats the error as `nar: offset N, entry "a/b": msg`; the entry is
// omitted for the root node.
func (e *Error) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("nar: offset %d: %s", e.Offset, e.Msg)
	}
	return fmt.Sprintf("nar: offset %d, entry %q: %s", e.Offset, e.Path, e.Msg)
}

// Unwrap returns the cause, io.ErrUnexpectedEOF for a truncated archive and
// nil otherwise.
func (e *Error) Unwrap() error { return e.err }

// padLen returns the number of zero bytes that follow a string of length n.
func padLen(n uint64) int { return int(-n & 7) }

var zeroPad [8]byte

// appendStr appends str(s) to b.
func appendStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, zeroPad[:padLen(uint64(len(s)))]...)
}

type byteString interface{ ~string | ~[]byte }

// indexByte is bytes.IndexByte for strings and byte slices alike.
func indexByte[T byteString](s T, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// checkName reports why name cannot be a directory entry name, or "".
func checkName[T byteString](name T) string {
	switch {
	case len(name) == 0:
		return "empty entry name"
	case len(name) > MaxNameLen:
		return fmt.Sprintf("entry name too long (%d bytes, max %d)", len(name), MaxNameLen)
	case string(name) == "." || string(name) == "..":
		return fmt.Sprintf("invalid entry name %q", name)
	case indexByte(name, '/') >= 0:
		return fmt.Sprintf("entry name %q contains '/'", name)
	case indexByte(name, 0) >= 0:
		return fmt.Sprintf("entry name %q contains NUL", name)
	}
	return ""
}

// checkTarget reports why target cannot be a symlink target, or "".
func checkTarget[T byteString](target T) string {
	switch {
	case len(target) == 0:
		return "empty symlink target"
	case len(target) > MaxTargetLen:
		return fmt.Sprintf("symlink target too long (%d bytes, max %d)", len(target), MaxTargetLen)
	case indexByte(target, 0) >= 0:
		return fmt.Sprintf("symlink target %q contains NUL", target)
	}
	return ""
}

// joinPath returns the path of entry name of directory dir.
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
