package nar

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

func nix32(sum [32]byte) string { return nixbase32.EncodeToString(sum[:]) }

// TestGoldenVectors checks hashes published by Nix (tests/functional/hash-path.sh,
// Nix Pills) and the ".links" names derived for Guix's test data.
func TestGoldenVectors(t *testing.T) {
	hello := strings.Repeat("Hello, world!", 1000)
	tests := []struct {
		name       string
		write      func(w *Writer) error
		size       int64
		hex, nix32 string
	}{
		{"mycontent", func(w *Writer) error { return w.RegularBytes(false, []byte("mycontent\n")) }, 128,
			"2bfef67de873c54551d884fdab3055d84d573e654efa79db3c0d7b98883f9ee3", ""},
		{"hi", func(w *Writer) error { return w.RegularBytes(false, []byte("hi\n")) }, -1,
			"", "1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h"},
		{"symlink", func(w *Writer) error { return w.Symlink("/non-existent-48cujwe8ndf4as0bne") }, -1,
			"", "1bl5ry3x1fcbwgr5c2x50bn572iixh4j1p6ax5isxly2ddgn8pbp"},
		{"empty-file", func(w *Writer) error { return w.RegularBytes(false, nil) }, 112, "", ""},
		{"empty-dir", func(w *Writer) error {
			if err := w.StartDirectory(); err != nil {
				return err
			}
			return w.EndDirectory()
		}, 96, "", ""},
		{"hello-world", func(w *Writer) error { return w.Regular(false, 13000, strings.NewReader(hello)) }, 13112,
			"", "17cwh1g1qkzvifyx91jcyk2gvw1zr2pd4n5wgzdzccc37kmz5mxl"},
		{"hello-world-exec", func(w *Writer) error { return w.RegularBytes(true, []byte(hello)) }, 13144,
			"", "0b4fa4qchfla7s9cyfrlifxkf680cr9j34dbxpdf1f9g1a86g7gv"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			if err := tt.write(w); err != nil {
				t.Fatalf("write = %v; want success", err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close() = %v; want success", err)
			}
			if w.Written() != int64(buf.Len()) {
				t.Errorf("Written() = %d; want %d", w.Written(), buf.Len())
			}
			if tt.size >= 0 && buf.Len() != int(tt.size) {
				t.Errorf("NAR size = %d; want %d", buf.Len(), tt.size)
			}
			sum := sha256.Sum256(buf.Bytes())
			if tt.hex != "" && hex.EncodeToString(sum[:]) != tt.hex {
				t.Errorf("sha256 = %x; want %s", sum, tt.hex)
			}
			if tt.nix32 != "" && nix32(sum) != tt.nix32 {
				t.Errorf("sha256 nix32 = %s; want %s", nix32(sum), tt.nix32)
			}
			if out, err := copyBytes(buf.Bytes()); err != nil || !bytes.Equal(out, buf.Bytes()) {
				t.Errorf("Copy() = %v; want byte-exact round trip", err)
			}
		})
	}
}

// TestSingleFileHelpers checks RegularPrefix/RegularSuffix/FileNARSize/HashFile/HashBytes
// against the Writer for a range of sizes around the padding boundaries.
func TestSingleFileHelpers(t *testing.T) {
	for _, exec := range []bool{false, true} {
		for _, size := range []int64{0, 1, 7, 8, 9, 10, 15, 16, 17, 1000, 13000, 65537} {
			data := bytes.Repeat([]byte{'x'}, int(size))
			var buf bytes.Buffer
			w := NewWriter(&buf)
			if err := w.Regular(exec, size, bytes.NewReader(data)); err != nil {
				t.Fatalf("Regular(%v, %d) = %v", exec, size, err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			want := buf.Bytes()
			got := cat(RegularPrefix(exec, size), data, RegularSuffix(size))
			if !bytes.Equal(got, want) {
				t.Errorf("RegularPrefix+data+RegularSuffix(%v, %d) = %x; want %x", exec, size, got, want)
			}
			if n := FileNARSize(exec, size); n != int64(len(want)) {
				t.Errorf("FileNARSize(%v, %d) = %d; want %d", exec, size, n, len(want))
			}
			sum, err := HashFile(exec, size, iotest.OneByteReader(bytes.NewReader(data)))
			if err != nil || sum != sha256.Sum256(want) {
				t.Errorf("HashFile(%v, %d) = %x, %v; want %x", exec, size, sum, err, sha256.Sum256(want))
			}
			if sum := HashBytes(exec, data); sum != sha256.Sum256(want) {
				t.Errorf("HashBytes(%v, %d) = %x; want %x", exec, size, sum, sha256.Sum256(want))
			}
		}
	}
	if _, err := HashFile(false, 10, strings.NewReader("short")); err == nil || !strings.Contains(err.Error(), "short read") {
		t.Errorf("HashFile(short input) = %v; want short read", err)
	}
	// Extra input beyond size is not consumed into the hash.
	a, _ := HashFile(false, 3, strings.NewReader("abcdef"))
	b, _ := HashFile(false, 3, strings.NewReader("abc"))
	if a != b {
		t.Errorf("HashFile read past size")
	}
}

// buildMulti writes multiNAR() with the Writer API.
func buildMulti(w *Writer) error {
	steps := []func() error{
		w.StartDirectory,
		func() error { return w.Entry("a") },
		func() error { return w.RegularBytes(false, []byte("hello\n")) },
		func() error { return w.Entry("b") },
		w.StartDirectory,
		func() error { return w.Entry("c") },
		func() error { return w.Regular(true, 18, strings.NewReader("#!/bin/sh\necho hi\n")) },
		func() error { return w.Entry("d") },
		func() error { return w.Symlink("../a") },
		func() error { return w.Entry("e") },
		w.StartDirectory,
		w.EndDirectory,
		w.EndDirectory,
		func() error { return w.Entry("eight") },
		func() error { return w.RegularBytes(false, []byte("12345678")) },
		func() error { return w.Entry("z") },
		func() error { return w.RegularBytes(true, nil) },
		w.EndDirectory,
		w.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

func TestWriterMulti(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := buildMulti(w); err != nil {
		t.Fatalf("writing = %v; want success", err)
	}
	if want := multiNAR(); !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("Writer output = %x; want %x", buf.Bytes(), want)
	}
	if w.Written() != int64(buf.Len()) {
		t.Errorf("Written() = %d; want %d", w.Written(), buf.Len())
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close() = %v; want nil", err)
	}
}

func TestWriterMisuse(t *testing.T) {
	tests := []struct {
		name string
		do   func(w *Writer) error
		want string
	}{
		{"close-empty", func(w *Writer) error { return w.Close() }, "without a root node"},
		{"close-open-dir", func(w *Writer) error { w.StartDirectory(); return w.Close() }, "incomplete"},
		{"close-open-entry", func(w *Writer) error { w.StartDirectory(); w.Entry("a"); return w.Close() }, "incomplete"},
		{"two-roots", func(w *Writer) error { w.RegularBytes(false, nil); return w.Symlink("x") }, "after the root node"},
		{"entry-at-root", func(w *Writer) error { return w.Entry("a") }, "outside a directory"},
		{"entry-in-file", func(w *Writer) error { w.RegularBytes(false, nil); return w.Entry("a") }, "outside a directory"},
		{"node-without-entry", func(w *Writer) error { w.StartDirectory(); return w.RegularBytes(false, nil) }, "without Entry"},
		{"entry-twice", func(w *Writer) error { w.StartDirectory(); w.Entry("a"); return w.Entry("b") }, "before the node"},
		{"end-after-entry", func(w *Writer) error { w.StartDirectory(); w.Entry("a"); return w.EndDirectory() }, "without its node"},
		{"end-without-dir", func(w *Writer) error { return w.EndDirectory() }, "without an open directory"},
		{"unsorted", func(w *Writer) error {
			w.StartDirectory()
			w.Entry("b")
			w.RegularBytes(false, nil)
			return w.Entry("a")
		}, `names not sorted ("a" after "b")`},
		{"duplicate", func(w *Writer) error {
			w.StartDirectory()
			w.Entry("a")
			w.RegularBytes(false, nil)
			return w.Entry("a")
		}, "duplicate entry name"},
		{"name-empty", func(w *Writer) error { w.StartDirectory(); return w.Entry("") }, "empty entry name"},
		{"name-dot", func(w *Writer) error { w.StartDirectory(); return w.Entry(".") }, "invalid entry name"},
		{"name-dotdot", func(w *Writer) error { w.StartDirectory(); return w.Entry("..") }, "invalid entry name"},
		{"name-slash", func(w *Writer) error { w.StartDirectory(); return w.Entry("a/b") }, "contains '/'"},
		{"name-nul", func(w *Writer) error { w.StartDirectory(); return w.Entry("a\x00") }, "contains NUL"},
		{"name-long", func(w *Writer) error { w.StartDirectory(); return w.Entry(strings.Repeat("n", 256)) }, "too long"},
		{"target-empty", func(w *Writer) error { return w.Symlink("") }, "empty symlink target"},
		{"target-long", func(w *Writer) error { return w.Symlink(strings.Repeat("t", 4096)) }, "too long"},
		{"target-nul", func(w *Writer) error { return w.Symlink("a\x00") }, "contains NUL"},
		{"short-read", func(w *Writer) error { return w.Regular(false, 10, strings.NewReader("abc")) }, "short read"},
		{"negative-size", func(w *Writer) error { return w.Regular(false, -1, strings.NewReader("")) }, "negative"},
		{"too-deep", func(w *Writer) error {
			for i := 0; i <= MaxDepth; i++ {
				if err := w.StartDirectory(); err != nil {
					return err
				}
				if err := w.Entry("d"); err != nil {
					return err
				}
			}
			return nil
		}, "nesting deeper than 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWriter(io.Discard)
			err := tt.do(w)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want error containing %q", err, tt.want)
			}
			// Errors are sticky.
			if err2 := w.Close(); err2 != err {
				t.Errorf("Close() after error = %v; want %v", err2, err)
			}
		})
	}
}

func TestWriterReaderError(t *testing.T) {
	boom := errors.New("boom")
	w := NewWriter(io.Discard)
	if err := w.Regular(false, 10, iotest.ErrReader(boom)); err != boom {
		t.Errorf("Regular(failing reader) = %v; want %v", err, boom)
	}
}

type limitedWriter struct {
	n int
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		n := w.n
		w.n = 0
		return n, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

func TestWriterWriteError(t *testing.T) {
	for limit := 0; limit < len(multiNAR()); limit += 7 {
		w := NewWriter(&limitedWriter{n: limit})
		err := buildMulti(w)
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("limit %d: err = %v; want disk full", limit, err)
		}
		if w.Written() != int64(limit) {
			t.Errorf("limit %d: Written() = %d; want %d", limit, w.Written(), limit)
		}
	}
}

// TestRegularBytesLarge covers the path that writes the data separately.
func TestRegularBytesLarge(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000)
	var a, b bytes.Buffer
	wa, wb := NewWriter(&a), NewWriter(&b)
	if err := wa.RegularBytes(true, data); err != nil {
		t.Fatal(err)
	}
	if err := wb.Regular(true, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("RegularBytes and Regular differ")
	}
	if want := cat(RegularPrefix(true, int64(len(data))), data, RegularSuffix(int64(len(data)))); !bytes.Equal(a.Bytes(), want) {
		t.Errorf("RegularBytes output differs from prefix+data+suffix")
	}
}
