package store

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/registry"
)

// chunkStage holds what one item adds to the manifest and chunk areas
// (chunk mode). Like the item's blob batch, nothing reaches the areas until
// the whole item succeeded.
type chunkStage struct {
	manifests *cas.Batch
	chunks    *cas.Batch

	mu   sync.Mutex
	used []chunk.Ref // the chunks of the manifests staged, checked at registration
}

func (s *Store) newChunkStage(dir string) (*chunkStage, error) {
	m, err := s.chunks.Manifests.NewBatch(filepath.Join(dir, "manifests"))
	if err != nil {
		return nil, err
	}
	c, err := s.chunks.Chunks.NewBatch(filepath.Join(dir, "chunks"))
	if err != nil {
		m.Abort()
		return nil, err
	}
	return &chunkStage{manifests: m, chunks: c}, nil
}

func (cs *chunkStage) abort() {
	cs.manifests.Abort()
	cs.chunks.Abort()
}

// commit moves the staged chunks into the chunk area, then the manifests
// into theirs: a manifest never names a chunk that is not there yet.
func (cs *chunkStage) commit() error {
	if err := cs.chunks.Commit(); err != nil {
		return err
	}
	return cs.manifests.Commit()
}

var splitters = sync.Pool{New: func() any { return chunk.NewSplitter() }}

// putData stores the contents of a file held in memory (blob or chunk mode)
// and sets n.key.
func (it *item) putData(n *node, data []byte) error {
	k := nar.HashBytes(n.exec, data)
	n.key = k
	if n.size == 0 {
		return nil // empty files need no blob
	}
	if it.chunks != nil && chunk.Chunked(n.size) {
		return it.putChunked(k, n.exec, n.size, bytes.NewReader(data))
	}
	_, err := it.batch.PutBytes(k, n.exec, data)
	return err
}

// putChunked stores a file of size bytes read from r, whose key is k, as
// its chunks and manifest, unless its manifest is present or staged. The
// bytes read must hash to k (the source may change while it is read).
func (it *item) putChunked(k cas.Key, exec bool, size int64, r io.Reader) error {
	cs := it.chunks
	if need, err := cs.manifests.Need(k); err != nil || !need {
		return err
	}
	sp := splitters.Get().(*chunk.Splitter)
	defer splitters.Put(sp)
	h := sha256.New()
	h.Write(nar.RegularPrefix(exec, size))
	var refs []chunk.Ref
	var total int64
	err := sp.Split(io.TeeReader(io.LimitReader(r, size), h), func(data []byte) error {
		ck := chunk.KeyOf(data)
		if _, err := cs.chunks.PutBytes(ck, false, data); err != nil {
			return err
		}
		refs = append(refs, chunk.Ref{Key: ck, Size: uint32(len(data))})
		total += int64(len(data))
		return nil
	})
	if err != nil {
		return err
	}
	h.Write(nar.RegularSuffix(size))
	if total != size || cas.Key(h.Sum(nil)) != k {
		return fmt.Errorf("%w (size %d, read %d)", errChanged, size, total)
	}
	if _, err := cs.manifests.PutBytes(k, exec, chunk.EncodeManifest(refs)); err != nil {
		return err
	}
	cs.mu.Lock()
	cs.used = append(cs.used, refs...)
	cs.mu.Unlock()
	return nil
}

// putChunkedFile stores a large source file in chunk mode: its key is
// computed from the source first, and only a file whose manifest is new is
// read again to be chunked.
func (it *item) putChunkedFile(n *node) error {
	f, err := n.openSrcFile()
	if err != nil {
		return err
	}
	defer f.Close()
	k, err := nar.HashFile(n.exec, n.size, f)
	if err != nil {
		return fmt.Errorf("%s: %w", n.src, err)
	}
	n.key = k
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := it.putChunked(k, n.exec, n.size, f); err != nil {
		return fmt.Errorf("%s: %w", n.src, err)
	}
	// The NAR hasher reads the source once more and checks it against k.
	n.copy, n.recheck = n.src, true
	return nil
}

// importChunked stores a large file of an archive in chunk mode: the bytes
// pass through to the NAR re-encoder and into a staging file, which is
// chunked (when its manifest is new) and removed.
func (it *item) importChunked(n *node, nr io.Reader, w *nar.Writer) error {
	tmp, err := os.CreateTemp(it.dir, "import-")
	if err != nil {
		return err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	h := sha256.New()
	h.Write(nar.RegularPrefix(n.exec, n.size))
	if err := w.Regular(n.exec, n.size, io.TeeReader(nr, io.MultiWriter(tmp, h))); err != nil {
		return err
	}
	h.Write(nar.RegularSuffix(n.size))
	copy(n.key[:], h.Sum(nil))
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return it.putChunked(n.key, n.exec, n.size, tmp)
}

// checkContents reports a blob, manifest or chunk a tree about to be
// registered relies on that is not there (ErrContentCollected: a collection
// removed it since the add found it present). Called under the shared GC
// lock after the item's own content was committed.
//
// Blobs that batch itself moved in under the caller's lock are not looked at.
func (s *Store) checkContents(info *registry.PathInfo, root *node, batch *cas.Batch, cs *chunkStage) error {
	seen := map[cas.Key]bool{}
	var missing error
	has := func(area *cas.Blobs, what string, k cas.Key) {
		if ok, err := area.Has(k); err != nil {
			missing = err
		} else if !ok {
			missing = fmt.Errorf("%w: %s %s (adding %s)", ErrContentCollected, what, k, info.Path)
		}
	}
	var walk func(n *node)
	walk = func(n *node) {
		switch {
		case missing != nil:
		case n.typ == nar.TypeRegular && n.size > 0 && !seen[n.key]:
			seen[n.key] = true
			if s.chunks != nil && chunk.Chunked(n.size) {
				has(s.chunks.Manifests, "manifest", n.key)
			} else if batch == nil || !batch.Made(n.key) {
				has(s.blobs, "blob", n.key)
			}
		case n.typ == nar.TypeDirectory:
			for _, k := range n.kids {
				walk(k)
			}
		}
	}
	walk(root)
	if cs != nil {
		chunks := map[cas.Key]bool{}
		for _, r := range cs.used {
			if missing == nil && !chunks[r.Key] {
				chunks[r.Key] = true
				has(s.chunks.Chunks, "chunk", r.Key)
			}
		}
	}
	return missing
}

// openContent opens the contents of a non-empty regular file of a tree:
// its blob, or in chunk mode the chunks its manifest lists.
func (s *Store) openContent(n registry.Node) (io.ReadCloser, error) {
	k := cas.Key(n.Key)
	if s.chunks != nil && chunk.Chunked(n.Size) {
		f, err := s.chunks.Open(k, n.Size)
		if err != nil {
			return nil, fmt.Errorf("chunked file %s: %w", k, err)
		}
		return f, nil
	}
	f, err := s.blobs.Open(k)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", k, err)
	}
	return f, nil
}
