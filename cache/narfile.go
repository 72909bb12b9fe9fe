package cache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/storefs/storefs/store"
)

// Source is the store a Handler serves and WriteDir copies from: the store
// itself or the daemon that owns it.
type Source interface {
	LookupHashPart(hash32 string) (string, error)
	Info(p string) (*store.Info, error)
	Export(ctx context.Context, w io.Writer, p string) error
	Closure(paths []string) ([]string, error)
}

// countWriter counts what goes through it.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// fileInfo is what a narinfo says of a NAR file.
type fileInfo struct {
	hash [32]byte
	size int64
}

func (fi fileInfo) hashString() string { return "sha256:" + nixbase32.EncodeToString(fi.hash[:]) }

// writeNARFile exports in's NAR, compressed with comp, into a new temporary
// file in dir, hashing the file as it is written and checking that the NAR
// has the hash and size the registry records (a store whose contents went
// bad is not passed on). It returns the file's name (the caller renames or
// removes it) and what a narinfo says of it. The NAR streams through: memory
// does not grow with its size.
func writeNARFile(ctx context.Context, src Source, in *store.Info, comp, dir string) (tmp string, fi fileInfo, err error) {
	f, err := os.CreateTemp(dir, ".tmp-nar-")
	if err != nil {
		return "", fi, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<16)
	fh := sha256.New()
	var fc countWriter
	cw, err := compressor(io.MultiWriter(bw, fh, &fc), comp)
	if err != nil {
		return "", fi, err
	}
	nh := sha256.New()
	var nc countWriter
	if err := src.Export(ctx, io.MultiWriter(cw, nh, &nc), in.Path); err != nil {
		return "", fi, err
	}
	if err := cw.Close(); err != nil {
		return "", fi, err
	}
	if err := bw.Flush(); err != nil {
		return "", fi, err
	}
	var narSum [32]byte
	copy(narSum[:], nh.Sum(nil))
	if got := store.NixHash(narSum); got != in.NarHash || nc.n != in.NarSize {
		return "", fi, fmt.Errorf("%s: the store's NAR has hash %s and %d bytes, but the registry records %s and %d bytes (run storefs verify --contents)",
			in.Path, got, nc.n, in.NarHash, in.NarSize)
	}
	if err := f.Sync(); err != nil {
		return "", fi, err
	}
	if err := f.Close(); err != nil {
		return "", fi, err
	}
	copy(fi.hash[:], fh.Sum(nil))
	fi.size = fc.n
	return f.Name(), fi, nil
}

// writeFileAtomic writes data to name by way of a temporary file and a
// rename, so readers see the old file or the whole new one.
func writeFileAtomic(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-"+filepath.Base(name)+"-")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
