package chunk

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/storefs/storefs/cas"
)

// Areas are a chunk-mode store's manifest and chunk areas.
type Areas struct {
	Manifests *cas.Blobs
	Chunks    *cas.Blobs
}

// NewAreas returns the areas rooted at the two directories.
func NewAreas(manifests, chunks string) *Areas {
	return &Areas{Manifests: cas.NewBlobs(manifests), Chunks: cas.NewBlobs(chunks)}
}

// ReadManifest reads and decodes the manifest of the file with key k and
// size bytes. A missing manifest satisfies errors.Is(err, fs.ErrNotExist).
func (a *Areas) ReadManifest(k cas.Key, size int64) ([]Ref, error) {
	return ReadManifestFile(a.Manifests.Path(k), k, size)
}

// ReadManifestFile reads the manifest at path (a staged one, say).
func ReadManifestFile(path string, k cas.Key, size int64) ([]Ref, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	refs, err := DecodeManifest(b, size)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", k, err)
	}
	return refs, nil
}

// VerifyChunk recomputes a chunk's key from its bytes.
func (a *Areas) VerifyChunk(k cas.Key) error {
	f, err := a.Chunks.Open(k)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if cas.Key(h.Sum(nil)) != k {
		return fmt.Errorf("chunk %s: %w (content hashes to %s)", k, cas.ErrKeyMismatch, cas.Key(h.Sum(nil)))
	}
	return nil
}

// File reads a chunked file at any offset, opening only the chunks a read
// touches. It is safe for concurrent use.
type File struct {
	path func(cas.Key) string // where a chunk is read from
	refs []Ref
	ends []int64 // ends[i] is the offset just after chunk i
	size int64

	mu   sync.Mutex
	open map[int]*os.File // a few open chunks, for sequential reads
	lru  []int
	off  int64 // for Read
}

// maxOpen is how many chunk descriptors a File keeps open.
const maxOpen = 4

// Open opens the chunked file with key k and size bytes.
func (a *Areas) Open(k cas.Key, size int64) (*File, error) {
	refs, err := a.ReadManifest(k, size)
	if err != nil {
		return nil, err
	}
	return NewFile(refs, a.Chunks.Path), nil
}

// NewFile reads the chunks refs from the paths path gives.
func NewFile(refs []Ref, path func(cas.Key) string) *File {
	f := &File{path: path, refs: refs, ends: make([]int64, len(refs)), open: map[int]*os.File{}}
	for i, r := range refs {
		f.size += int64(r.Size)
		f.ends[i] = f.size
	}
	return f
}

// Size is the file's size.
func (f *File) Size() int64 { return f.size }

func (f *File) chunk(i int) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.open[i]; c != nil {
		return c, nil
	}
	c, err := os.Open(f.path(f.refs[i].Key))
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", f.refs[i].Key, err)
	}
	if len(f.lru) >= maxOpen {
		old := f.lru[0]
		f.lru = f.lru[1:]
		// A read in progress on it completes (os.File closes the descriptor
		// after its last user); one that starts later gets ErrClosed and
		// opens the chunk again.
		f.open[old].Close()
		delete(f.open, old)
	}
	f.open[i] = c
	f.lru = append(f.lru, i)
	return c, nil
}

// ReadAt reads len(p) bytes at off (fewer, with io.EOF, at the end).
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("chunk: negative offset")
	}
	n := 0
	for len(p) > 0 && off < f.size {
		i := sort.Search(len(f.ends), func(i int) bool { return f.ends[i] > off })
		start := f.ends[i] - int64(f.refs[i].Size)
		want := min(int64(len(p)), f.ends[i]-off)
		c, err := f.chunk(i)
		if err != nil {
			return n, err
		}
		m, err := c.ReadAt(p[:want], off-start)
		if errors.Is(err, os.ErrClosed) && m == 0 {
			continue // evicted by a concurrent read: open it again
		}
		n += m
		if err != nil && !(err == io.EOF && int64(m) == want) {
			if err == io.EOF {
				return n, fmt.Errorf("chunk %s: shorter than its %d bytes: %w", f.refs[i].Key, f.refs[i].Size, io.ErrUnexpectedEOF)
			}
			return n, err
		}
		p, off = p[m:], off+int64(m)
	}
	if len(p) > 0 {
		return n, io.EOF
	}
	return n, nil
}

// Read reads sequentially from the start (io.Reader, for NAR export).
func (f *File) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}

// Close closes the open chunks.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.open {
		c.Close()
		delete(f.open, i)
	}
	f.lru = nil
	return nil
}
