package store

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/wire"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/registry"
)

// ImportOptions configure Import.
type ImportOptions struct {
	Name     string   // store path name (required)
	Refs     []string // references: full store paths that must be valid
	Progress *Progress
	NoDedup  bool            // disk mode: no `.links` deduplication
	Dedup    *cas.DedupStats // if set, receives what deduplication did
	Root     string          // if set, a permanent GC root made for the path

	// Path, if set, is the store path to register the NAR under instead of
	// the content-addressed one computed from it: a substitute, named by
	// whoever built it (input-addressed). Name is then taken from it (a
	// different Name is refused) and Refs may name Path itself. The caller
	// vouches for the name (it checked a signature); Import only checks it
	// is a path of this store dir.
	Path    string
	Deriver string // with Path: the deriver's full path, recorded as is
	CA      string // with Path: the content address to record, or ""
	// NarHash ("sha256:<nix32>" or any form Nix accepts) and NarSize, if
	// set, are what the NAR must hash to and measure; anything else is
	// refused before the item is registered, leaving the store as it was.
	NarHash string
	NarSize int64
}

// Import reads one NAR from r (strictly: see package nar) and adds it as a
// content-addressed item, like Add. A malformed archive is refused with an
// error naming the offset and entry, and leaves the store as it was.
func (s *Store) Import(ctx context.Context, r io.Reader, o ImportOptions) (string, error) {
	return s.importNAR(ctx, r, o, "import: ")
}

// AddNAR is Import for a NAR made from a source tree by a client of a
// daemon: the same, but its errors are not prefixed with "import:" (the
// client prefixes them as Add does).
func (s *Store) AddNAR(ctx context.Context, r io.Reader, o ImportOptions) (string, error) {
	return s.importNAR(ctx, r, o, "")
}

func (s *Store) importNAR(ctx context.Context, r io.Reader, o ImportOptions, prefix string) (string, error) {
	pi, err := s.prepareNAR(ctx, r, o, prefix, true)
	if err != nil {
		return "", err
	}
	return pi.Commit(ctx) // which discards what is left staged
}

// PreparedImport is a NAR read into the store's staging area and checked
// (strictly parsed, NarHash and NarSize as asked), but not yet valid: no
// path of the store changed. Commit makes it valid; Discard drops it. A
// caller fetching a closure prepares every item (in parallel, as they
// arrive) and commits them, references first, only once all are prepared,
// so a bad download of any leaves the store as it was.
//
// Its references need not be valid while it is prepared; Commit refuses
// one that is not valid then (ErrNotValid). A prepared import holds its
// staging dir (a collector leaves it alone while this process lives) and,
// in blob mode, its staged blobs, until Commit or Discard.
type PreparedImport struct {
	s      *Store
	it     *item
	root   *node
	info   *registry.PathInfo
	path   string
	gcRoot string
	prefix string
}

// PrepareImport is the first half of Import for a named path (o.Path) or a
// content-addressed one: it reads and checks the NAR and stages its
// contents. Commit or Discard the result.
func (s *Store) PrepareImport(ctx context.Context, r io.Reader, o ImportOptions) (*PreparedImport, error) {
	return s.prepareNAR(ctx, r, o, "import: ", false)
}

// Path is the store path the prepared item will have.
func (pi *PreparedImport) Path() string { return pi.path }

// Commit makes the prepared item valid (with its GC root, if asked) and
// returns its path. A path valid already is left as it was. Commit is
// called once; the item is discarded whether it succeeds or not.
func (pi *PreparedImport) Commit(ctx context.Context) (string, error) {
	if pi.it == nil {
		return "", errors.New("import: committed or discarded already")
	}
	defer pi.Discard()
	if err := pi.it.finish(pi.root, pi.info); err != nil {
		return "", fmt.Errorf("%s%w", pi.prefix, err)
	}
	if pi.gcRoot != "" {
		if _, err := pi.s.AddRoot(ctx, pi.gcRoot, pi.path, false); err != nil {
			return "", err
		}
	}
	return pi.path, nil
}

// Discard drops what the import staged (nothing, after Commit).
func (pi *PreparedImport) Discard() {
	if pi.it != nil {
		pi.it.discard()
		pi.it = nil
	}
}

func (s *Store) prepareNAR(ctx context.Context, r io.Reader, o ImportOptions, prefix string, refsValid bool) (*PreparedImport, error) {
	var base string // the named path's base name (o.Path), or ""
	if o.Path != "" {
		b, rel, err := SplitStorePath(s.storeDir, o.Path)
		if err != nil || rel != "" {
			return nil, fmt.Errorf("%sbad store path %q (this store's dir is %s)", prefix, o.Path, s.storeDir)
		}
		_, name, _ := ParseBaseName(b)
		if o.Name != "" && o.Name != name {
			return nil, fmt.Errorf("%sname %q differs from the path's %q", prefix, o.Name, name)
		}
		base, o.Name = b, name
	} else if o.Deriver != "" || o.CA != "" {
		return nil, fmt.Errorf("%sa deriver or content address is only recorded for a named path", prefix)
	}
	if err := CheckName(o.Name); err != nil {
		return nil, err
	}
	var wantHash *[32]byte
	if o.NarHash != "" {
		h, err := nixhash.ParseAny(o.NarHash, nil)
		if err != nil || h.Algo() != nixhash.SHA256 {
			return nil, fmt.Errorf("%sbad NAR hash %q: want a sha256", prefix, o.NarHash)
		}
		wantHash = (*[32]byte)(h.Digest())
	}
	var deriver string
	if o.Deriver != "" {
		d, rel, err := SplitStorePath(s.storeDir, o.Deriver)
		if err != nil || rel != "" {
			return nil, fmt.Errorf("%sbad deriver %q", prefix, o.Deriver)
		}
		deriver = d
	}
	self := false
	refList := o.Refs
	if base != "" {
		refList = slices.DeleteFunc(slices.Clone(o.Refs), func(r string) bool {
			if r == base || r == s.FullPath(base) {
				self = true
				return true
			}
			return false
		})
	}
	refs, err := s.parseRefs(refList, refsValid)
	if err != nil {
		return nil, err
	}
	if self {
		refs = sortedUnique(append(refs, base))
	}
	it, err := s.newItem(ctx, o.NoDedup)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			it.discard()
		}
	}()
	if o.Dedup != nil {
		defer func() { o.Dedup.Add(it.stats) }()
	}
	root, sum, size, err := it.ingestNAR(ctx, nar.NewReader(r), o.Progress)
	if err != nil {
		return nil, fmt.Errorf("%s%w", prefix, err)
	}
	if wantHash != nil && sum != *wantHash {
		return nil, fmt.Errorf("%sNAR hash mismatch: got %s, want %s", prefix, NixHash(sum), NixHash(*wantHash))
	}
	if o.NarSize != 0 && size != o.NarSize {
		return nil, fmt.Errorf("%sNAR size mismatch: got %d bytes, want %d", prefix, size, o.NarSize)
	}
	pi := &PreparedImport{s: s, it: it, root: root, gcRoot: o.Root, prefix: prefix}
	if base != "" {
		pi.path = s.FullPath(base)
		pi.info = &registry.PathInfo{Path: base, NarHash: sum, NarSize: size, References: refs, Deriver: deriver, CA: o.CA}
	} else {
		pi.path = MakeSourcePath(s.storeDir, sum, o.Name, s.fullPaths(refs))
		pi.info = &registry.PathInfo{
			Path:       filepath.Base(pi.path),
			NarHash:    sum,
			NarSize:    size,
			References: refs,
			CA:         "fixed:r:sha256:" + NixHash(sum)[len("sha256:"):],
		}
	}
	ok = true
	return pi, nil
}

// ingestNAR stores the nodes of an archive as they stream by (blobs, or the
// staged tree) and re-encodes them into the NAR hasher. A strict reader only
// accepts canonical archives, so the re-encoding equals the input bytes.
//
// Small files are written by a pool of workers while the archive streams on
// (the reader and the NAR hasher are serial; a file's blob key, its create
// and write are not): at most `workers` files, each up to smallFile, wait
// for a worker. All workers are done when ingestNAR returns.
func (it *item) ingestNAR(ctx context.Context, nr *nar.Reader, prog *Progress) (root *node, sum [32]byte, size int64, err error) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(4, 2*runtime.GOMAXPROCS(0)))
	it.pool = g
	defer func() {
		it.pool = nil
		// A worker's failure is what cancelled the stream: it says what happened.
		if werr := g.Wait(); werr != nil && (err == nil || errors.Is(err, context.Canceled) && ctx.Err() == nil) {
			err = werr
		}
	}()
	ctx = gctx
	h := sha256.New()
	w := nar.NewWriter(h)
	var stack []*node // open directories
	closeTo := func(depth int) error {
		for len(stack) > depth {
			stack = stack[:len(stack)-1]
			if err := w.EndDirectory(); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, sum, 0, err
		}
		hdr, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, sum, 0, err
		}
		n := &node{rel: hdr.Path, typ: hdr.Type, exec: hdr.Executable, size: hdr.Size, target: hdr.LinkTarget}
		if hdr.Path == "" {
			root = n
		} else {
			_, name := path.Split(hdr.Path)
			n.name = name
			// the parent is open at depth = number of slashes + 1 (the root is 1)
			if err := closeTo(strings.Count(hdr.Path, "/") + 1); err != nil {
				return nil, sum, 0, err
			}
			parent := stack[len(stack)-1]
			parent.kids = append(parent.kids, n)
			if err := w.Entry(name); err != nil {
				return nil, sum, 0, err
			}
		}
		switch n.typ {
		case nar.TypeDirectory:
			if err := w.StartDirectory(); err != nil {
				return nil, sum, 0, err
			}
			stack = append(stack, n)
			if it.s.mode == ModeDisk {
				if err := os.Mkdir(it.treePath(n.rel), 0o755); err != nil {
					return nil, sum, 0, err
				}
			}
		case nar.TypeSymlink:
			if err := w.Symlink(n.target); err != nil {
				return nil, sum, 0, err
			}
			if it.s.mode == ModeDisk {
				if err := os.Symlink(n.target, it.treePath(n.rel)); err != nil {
					return nil, sum, 0, err
				}
			}
		case nar.TypeRegular:
			if err := it.ingestStream(n, nr, w); err != nil {
				return nil, sum, 0, err
			}
			prog.bytes(n.size)
			prog.files(1)
		}
	}
	if root == nil {
		return nil, sum, 0, errors.New("empty archive")
	}
	if err := closeTo(0); err != nil {
		return nil, sum, 0, err
	}
	if err := w.Close(); err != nil {
		return nil, sum, 0, err
	}
	copy(sum[:], h.Sum(nil))
	return root, sum, w.Written(), nil
}

// ingestStream stores one regular file's contents from the archive and
// feeds them to the NAR re-encoder.
func (it *item) ingestStream(n *node, nr *nar.Reader, w *nar.Writer) error {
	if it.s.mode == ModeDisk {
		return it.streamFile(n, nr, w)
	}
	if n.size <= smallFile {
		fb, data, err := readSmall(n, nr, w)
		if err != nil {
			return err
		}
		it.pool.Go(func() error {
			defer putBuf(fb)
			return it.putData(n, data)
		})
		return nil
	}
	if it.chunks != nil {
		return it.importChunked(n, nr, w)
	}
	bw, err := it.batch.NewWriter(n.exec, n.size)
	if err != nil {
		return err
	}
	defer bw.Abort()
	if err := w.Regular(n.exec, n.size, io.TeeReader(nr, bw)); err != nil {
		return err
	}
	n.key, _, err = bw.Commit()
	return err
}

// readSmall reads a small file's contents from the archive into a recycled
// buffer (see fileBuf; the caller puts it back once the contents are
// stored) and feeds them to the NAR re-encoder.
func readSmall(n *node, nr *nar.Reader, w *nar.Writer) (*fileBuf, []byte, error) {
	fb := getBuf(int(n.size))
	data := fb.b[:n.size]
	if _, err := io.ReadFull(nr, data); err != nil {
		putBuf(fb)
		return nil, nil, err
	}
	if err := w.RegularBytes(n.exec, data); err != nil {
		putBuf(fb)
		return nil, nil, err
	}
	return fb, data, nil
}

// streamFile writes one regular file of an archive into the staged tree
// (disk mode), deduplicating it like copyFile: a small file's entry is
// checked before anything is written; a large one is written while its key
// is computed, then canonicalised.
func (it *item) streamFile(n *node, nr *nar.Reader, w *nar.Writer) error {
	dst := it.treePath(n.rel)
	dedup := it.dedup && n.size >= it.s.linksMin
	if n.size <= smallFile {
		fb, data, err := readSmall(n, nr, w)
		if err != nil {
			return err
		}
		it.pool.Go(func() error {
			defer putBuf(fb)
			if dedup {
				n.key = nar.HashBytes(n.exec, data)
				if it.linkExisting(n, dst) {
					return nil
				}
			}
			if err := writeFile(dst, n.exec, data); err != nil {
				return err
			}
			if dedup {
				it.pendingLink(n)
			}
			return nil
		})
		return nil
	} else {
		out, err := createFile(dst, n.exec)
		if err != nil {
			return err
		}
		h := sha256.New()
		h.Write(nar.RegularPrefix(n.exec, n.size))
		err = w.Regular(n.exec, n.size, io.TeeReader(nr, io.MultiWriter(out, h)))
		if err == nil {
			err = canonFile(out, n.exec)
		}
		out.Close()
		if err != nil {
			return err
		}
		h.Write(nar.RegularSuffix(n.size))
		copy(n.key[:], h.Sum(nil))
	}
	if dedup {
		it.pendingLink(n)
	}
	return nil
}

// exportMagic marks the end of an item's NAR in a `nix-store --export` stream.
const exportMagic = 0x4558494e

// ImportBundle reads a `nix-store --export` stream (also Guix's, whose
// trailing signature it ignores), adding each item under the path the
// stream names, with its references and deriver. Each item's references must
// be valid or come earlier in the stream. It returns the paths in stream
// order.
func (s *Store) ImportBundle(ctx context.Context, r io.Reader, prog *Progress) ([]string, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	var out []string
	for i := 1; ; i++ {
		more, err := wire.ReadUint64(br)
		if err != nil {
			return out, fmt.Errorf("import bundle: item %d: reading marker: %w", i, eofIsTruncation(err))
		}
		if more == 0 {
			break
		}
		if more != 1 {
			return out, fmt.Errorf("import bundle: item %d: bad marker %d", i, more)
		}
		if sig, err := peekSignature(br); err != nil {
			return out, fmt.Errorf("import bundle: item %d: %w", i, err)
		} else if sig {
			break // Guix: a trailing "(signature …)" instead of the end marker
		}
		p, err := s.importBundleItem(ctx, br, prog)
		if err != nil {
			return out, fmt.Errorf("import bundle: item %d: %w", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func eofIsTruncation(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// peekSignature reports whether the next token is a Guix signature string
// rather than a NAR, and consumes it if so.
func peekSignature(br *bufio.Reader) (bool, error) {
	b, err := br.Peek(8 + len("(signature"))
	if err != nil {
		return false, nil // let the NAR reader report the truncation
	}
	if string(b[8:]) != "(signature" {
		return false, nil
	}
	n := binary.LittleEndian.Uint64(b[:8])
	if _, err := wire.ReadString(br, 1<<20); err != nil || n > 1<<20 {
		return false, fmt.Errorf("reading trailing signature: %v", err)
	}
	return true, nil
}

func (s *Store) importBundleItem(ctx context.Context, br *bufio.Reader, prog *Progress) (string, error) {
	it, err := s.newItem(ctx, false)
	if err != nil {
		return "", err
	}
	defer it.discard()
	root, sum, size, err := it.ingestNAR(ctx, nar.NewEmbeddedReader(br), prog)
	if err != nil {
		return "", err
	}
	magic, err := wire.ReadUint64(br)
	if err != nil {
		return "", eofIsTruncation(err)
	}
	if magic != exportMagic {
		return "", fmt.Errorf("bad export magic %#x after the NAR", magic)
	}
	full, err := wire.ReadString(br, 4096)
	if err != nil {
		return "", eofIsTruncation(err)
	}
	base, rel, err := SplitStorePath(s.storeDir, full)
	if err != nil || rel != "" || full != s.FullPath(base) {
		return "", fmt.Errorf("bad store path %q in bundle (this store's dir is %s)", full, s.storeDir)
	}
	nrefs, err := wire.ReadUint64(br)
	if err != nil {
		return "", eofIsTruncation(err)
	}
	if nrefs > 1<<20 {
		return "", fmt.Errorf("%s: %d references is not plausible", full, nrefs)
	}
	var refs []string
	for range nrefs {
		rp, err := wire.ReadString(br, 4096)
		if err != nil {
			return "", eofIsTruncation(err)
		}
		rb, rrel, err := SplitStorePath(s.storeDir, rp)
		if err != nil || rrel != "" {
			return "", fmt.Errorf("%s: bad reference %q", full, rp)
		}
		refs = append(refs, rb)
	}
	deriver, err := wire.ReadString(br, 4096)
	if err != nil {
		return "", eofIsTruncation(err)
	}
	var deriverBase string
	if deriver != "" {
		db, drel, err := SplitStorePath(s.storeDir, deriver)
		if err != nil || drel != "" {
			return "", fmt.Errorf("%s: bad deriver %q", full, deriver)
		}
		deriverBase = db
	}
	hasSig, err := wire.ReadUint64(br)
	if err != nil {
		return "", eofIsTruncation(err)
	}
	if hasSig == 1 {
		if _, err := wire.ReadString(br, 1<<20); err != nil {
			return "", eofIsTruncation(err)
		}
	} else if hasSig != 0 {
		return "", fmt.Errorf("%s: bad signature flag %d", full, hasSig)
	}
	// References must be valid (earlier items of the stream were registered
	// already) or the item itself.
	for _, ref := range refs {
		if ref == base {
			continue
		}
		if ok, err := s.reg.IsValid(ref); err != nil {
			return "", err
		} else if !ok {
			return "", fmt.Errorf("%s: reference %s: %w", full, s.FullPath(ref), ErrNotValid)
		}
	}
	info := &registry.PathInfo{Path: base, NarHash: sum, NarSize: size, References: sortedUnique(refs), Deriver: deriverBase}
	if err := it.finish(root, info); err != nil {
		return "", err
	}
	return full, nil
}

func sortedUnique(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}
