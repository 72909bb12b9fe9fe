package cache

import (
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"

	"runtime"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compressions are the compressions storefs writes NARs with. It reads
// these and, from caches written by others, bzip2 (what a narinfo without
// Compression means) and gzip.
var Compressions = []string{"none", "xz", "zstd"}

// CheckCompression accepts a compression storefs can write.
func CheckCompression(c string) error {
	switch c {
	case "none", "xz", "zstd":
		return nil
	}
	return fmt.Errorf("unknown compression %q: want none, xz or zstd", c)
}

// fileExt is the NAR file name's ending for a compression, as Nix names them.
func fileExt(c string) string {
	switch c {
	case "xz":
		return ".nar.xz"
	case "zstd":
		return ".nar.zst"
	}
	return ".nar"
}

// nopWriteCloser is a WriteCloser whose Close does nothing.
type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// zstdEncoders bounds the block encoders of one zstd stream, which
// compress a large NAR's blocks in parallel (a closure's largest NAR would
// otherwise keep `copy` and `serve` on one core: 12% of `copy --to` zstd's
// time on the Go corpus).
const zstdEncoders = 4

// compressor returns a writer that compresses into w; Close flushes it (and
// does not close w). Both keep a bounded amount of memory whatever the size
// of the stream: xz an 8 MiB dictionary, zstd the windows of at most
// zstdEncoders block encoders.
func compressor(w io.Writer, c string) (io.WriteCloser, error) {
	switch c {
	case "none":
		return nopWriteCloser{w}, nil
	case "xz":
		return xz.NewWriter(w)
	case "zstd":
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(min(zstdEncoders, runtime.GOMAXPROCS(0))), zstd.WithEncoderLevel(zstd.SpeedDefault))
	}
	return nil, CheckCompression(c)
}

// decompressor returns a reader of r's decompressed bytes.
func decompressor(r io.Reader, c string) (io.ReadCloser, error) {
	switch c {
	case "none", "":
		return io.NopCloser(r), nil
	case "xz":
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(xr), nil
	case "zstd":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	case "bzip2":
		return io.NopCloser(bzip2.NewReader(r)), nil
	case "gzip":
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return gr, nil
	}
	return nil, fmt.Errorf("unsupported compression %q (storefs reads none, xz, zstd, bzip2 and gzip)", c)
}
