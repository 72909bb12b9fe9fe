package nar

import (
	"crypto/sha256"
	"fmt"
	"io"
)

// RegularPrefix returns the bytes of a single-file archive that precede the
// file contents: Magic, "(", "type", "regular", ["executable", ""],
// "contents" and the contents length.
func RegularPrefix(exec bool, size int64) []byte {
	w := Writer{buf: make([]byte, 0, 128)}
	w.buf = appendStr(w.buf, Magic)
	w.appendRegularPrefix(exec, size)
	return w.buf
}

// RegularSuffix returns the bytes of a single-file archive that follow the
// file contents: the contents padding and ")".
func RegularSuffix(size int64) []byte {
	b := make([]byte, 0, 8+16)
	b = append(b, zeroPad[:padLen(uint64(size))]...)
	return appendStr(b, ")")
}

// FileNARSize returns the size of the archive of a single regular file of
// size bytes.
func FileNARSize(exec bool, size int64) int64 {
	n := int64(24 + 16 + 16 + 16 + 16 + 8) // magic ( type regular contents len
	if exec {
		n += 24 + 8 // executable ""
	}
	return n + size + int64(padLen(uint64(size))) + 16
}

// HashBytes is HashFile of contents held in memory, hashed in place.
func HashBytes(exec bool, data []byte) (sum [32]byte) {
	h := sha256.New()
	h.Write(RegularPrefix(exec, int64(len(data))))
	h.Write(data)
	h.Write(RegularSuffix(int64(len(data))))
	h.Sum(sum[:0])
	return sum
}

// HashFile returns the SHA-256 of the archive of a single regular file whose
// contents are exactly size bytes read from r; the store uses it (in nix32)
// as the file's ".links" name.
func HashFile(exec bool, size int64, r io.Reader) (sum [32]byte, err error) {
	if size < 0 {
		return sum, fmt.Errorf("nar: negative file size %d", size)
	}
	h := sha256.New()
	h.Write(RegularPrefix(exec, size))
	bp := copyBufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(h, io.LimitReader(r, size), *bp)
	copyBufPool.Put(bp)
	if err != nil {
		return sum, err
	}
	if n != size {
		return sum, fmt.Errorf("nar: short read: got %d of %d bytes of file contents", n, size)
	}
	h.Write(RegularSuffix(size))
	h.Sum(sum[:0])
	return sum, nil
}
