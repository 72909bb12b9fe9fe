package fs

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/storefs/storefs/registry"
)

// Inode numbers are deterministic, so they are stable across lookups and
// remounts:
//
//   - a regular file: the first 8 bytes of its blob key, which is the
//     sha256 of the file's NAR (executable bit included), so identical files
//     anywhere in the store are one inode; the next 8 bytes are the
//     generation, so go-fuse only aliases two files on a 127-bit collision;
//   - a directory or symlink: the first 8 bytes of sha256("d" or "l", item
//     base name, path below the item), one inode per (item, path): the Linux
//     dcache does not allow one directory inode under two names.
//
// The top bit is cleared (go-fuse hands out automatic numbers from 2^63),
// and 0 and 1 (the root) are avoided.
func fileIno(k registry.Digest) (ino, gen uint64) {
	return fix(binary.LittleEndian.Uint64(k[:8])), binary.LittleEndian.Uint64(k[8:16])
}

func pathIno(kind byte, item, rel string) uint64 {
	h := sha256.New()
	h.Write([]byte{kind})
	h.Write([]byte(item))
	h.Write([]byte{0})
	h.Write([]byte(rel))
	var sum [32]byte
	h.Sum(sum[:0])
	return fix(binary.LittleEndian.Uint64(sum[:8]))
}

func fix(ino uint64) uint64 {
	ino &^= 1 << 63
	if ino < 2 {
		ino += 2
	}
	return ino
}
