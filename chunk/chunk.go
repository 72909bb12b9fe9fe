// Package chunk is the content layer of chunk mode: a regular file of at
// least Threshold bytes is split with content-defined chunking (Rabin
// fingerprints, github.com/restic/chunker) into chunks of MinSize to MaxSize
// bytes (AvgSize on average), each distinct chunk is stored once in the chunk
// area, and the file is recorded as its manifest: the list of its chunks.
// Files that differ in small parts (a rebuilt binary, the next version of a
// library) then share every chunk but the few around the change.
//
// Smaller files are kept whole, exactly as in blob mode: splitting them
// would cost an inode and a block per chunk for no sharing.
//
// On disk (each area a cas.Blobs, fanned out by the first two characters):
//
//	blobs/<2>/<file key>      files under Threshold, whole (as in blob mode)
//	manifests/<2>/<file key>  the manifest of a chunked file
//	chunks/<2>/<chunk key>    one chunk; its key is nix32(sha256(bytes))
//
// A file key is the blob key (nix32 sha256 of the file's NAR), so the tree
// records, the inode numbers of a mount and the verification rules are
// those of blob mode. The chunking parameters (and the fixed polynomial) are
// part of the format: changing them would make equal files chunk
// differently, so two stores would share nothing.
package chunk

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/restic/chunker"

	"github.com/storefs/storefs/cas"
)

// The chunking parameters. An average of 64 KiB keeps a change local (a
// one-byte insertion costs one or two chunks) while a file of a few MiB
// needs only a few dozen chunk files; 16 KiB and 256 KiB bound the
// extremes (restic uses 512 KiB to 8 MiB for backups, where the unit is a
// pack, not a file).
const (
	MinSize   = 16 << 10
	AvgBits   = 16 // AvgSize = 1 << AvgBits
	AvgSize   = 1 << AvgBits
	MaxSize   = 256 << 10
	Threshold = 64 << 10 // files of at least this many bytes are chunked
)

// Pol is the irreducible polynomial of the rolling hash, fixed for every
// store so that equal contents chunk equally everywhere.
const Pol = chunker.Pol(0x3DA3358B4DC173)

// Chunked reports whether a regular file of size bytes is stored as chunks
// (otherwise it is stored whole, as a blob).
func Chunked(size int64) bool { return size >= Threshold }

// Ref is one chunk of a file: its key and length.
type Ref struct {
	Key  cas.Key
	Size uint32
}

// KeyOf is the key of a chunk's bytes.
func KeyOf(data []byte) cas.Key { return cas.Key(sha256.Sum256(data)) }

// Splitter cuts streams into chunks; one Splitter may be reused for many
// streams, not concurrently.
type Splitter struct {
	c   *chunker.Chunker
	buf []byte
}

// NewSplitter returns a Splitter with its buffers.
func NewSplitter() *Splitter {
	return &Splitter{c: chunker.NewWithBoundaries(nil, Pol, MinSize, MaxSize), buf: make([]byte, MaxSize)}
}

// Split reads r to its end and calls fn for each chunk in order. The data
// passed to fn is valid only during the call.
func (s *Splitter) Split(r io.Reader, fn func(data []byte) error) error {
	s.c.ResetWithBoundaries(r, Pol, MinSize, MaxSize)
	s.c.SetAverageBits(AvgBits)
	for {
		c, err := s.c.Next(s.buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(c.Data); err != nil {
			return err
		}
	}
}

// manifestMagic starts every manifest; the version is its last byte.
var manifestMagic = [8]byte{'s', 'f', 'c', 'h', 'u', 'n', 'k', 1}

// refLen is the encoded size of one Ref: the key and a big-endian length.
const refLen = 32 + 4

// ErrCorrupt: a manifest that does not decode or does not add up.
var ErrCorrupt = errors.New("corrupt chunk manifest")

// EncodeManifest is the manifest of a file made of refs.
func EncodeManifest(refs []Ref) []byte {
	b := make([]byte, 0, len(manifestMagic)+refLen*len(refs))
	b = append(b, manifestMagic[:]...)
	for _, r := range refs {
		b = append(b, r.Key[:]...)
		b = binary.BigEndian.AppendUint32(b, r.Size)
	}
	return b
}

// DecodeManifest decodes a manifest and checks that its chunks add up to
// size bytes (unless size is negative: unknown).
func DecodeManifest(b []byte, size int64) ([]Ref, error) {
	if len(b) < len(manifestMagic) || [8]byte(b[:8]) != manifestMagic || (len(b)-8)%refLen != 0 {
		return nil, fmt.Errorf("%w: bad header or length %d", ErrCorrupt, len(b))
	}
	b = b[8:]
	refs := make([]Ref, len(b)/refLen)
	var total int64
	for i := range refs {
		rec := b[i*refLen : (i+1)*refLen]
		copy(refs[i].Key[:], rec[:32])
		refs[i].Size = binary.BigEndian.Uint32(rec[32:])
		if refs[i].Size == 0 || refs[i].Size > MaxSize {
			return nil, fmt.Errorf("%w: chunk %d has %d bytes", ErrCorrupt, i, refs[i].Size)
		}
		total += int64(refs[i].Size)
	}
	if size >= 0 && total != size {
		return nil, fmt.Errorf("%w: chunks add up to %d bytes, the file has %d", ErrCorrupt, total, size)
	}
	return refs, nil
}

// ManifestSize is the encoded size of a manifest of n chunks.
func ManifestSize(n int) int64 { return int64(len(manifestMagic) + refLen*n) }
