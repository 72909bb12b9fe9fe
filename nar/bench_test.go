package nar

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	gonix "github.com/nix-community/go-nix/pkg/nar"
)

// Benchmarks against go-nix's writer and reader, to justify owning the hot
// path. Run with: go test ./nar/ -run '^$' -bench . -benchmem

type benchFile struct {
	name string
	exec bool
	data []byte
}

type benchTree struct {
	name  string
	files []benchFile // nil name = a single root file
}

func benchTrees() []benchTree {
	small := make([]benchFile, 1000)
	for i := range small {
		small[i] = benchFile{
			name: fmt.Sprintf("file-%04d", i),
			exec: i%7 == 0,
			data: bytes.Repeat([]byte{byte(i)}, (i*37)%1500),
		}
	}
	big := make([]byte, 64<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	return []benchTree{
		{"1000-small-files", small},
		{"64MiB-file", []benchFile{{data: big}}},
	}
}

// noWriterTo hides bytes.Reader's WriteTo so both writers stream through a
// buffer, as they do from a file or a socket.
type noWriterTo struct{ io.Reader }

// noReaderFrom hides io.Discard's ReadFrom so both readers are driven by the
// same io.CopyBuffer loop.
type noReaderFrom struct{ io.Writer }

func writeOurs(w io.Writer, t benchTree) error {
	nw := NewWriter(w)
	if t.files[0].name == "" {
		f := t.files[0]
		if err := nw.Regular(f.exec, int64(len(f.data)), noWriterTo{bytes.NewReader(f.data)}); err != nil {
			return err
		}
		return nw.Close()
	}
	if err := nw.StartDirectory(); err != nil {
		return err
	}
	for _, f := range t.files {
		if err := nw.Entry(f.name); err != nil {
			return err
		}
		if err := nw.RegularBytes(f.exec, f.data); err != nil {
			return err
		}
	}
	if err := nw.EndDirectory(); err != nil {
		return err
	}
	return nw.Close()
}

func writeGoNix(w io.Writer, t benchTree, buf []byte) error {
	nw, err := gonix.NewWriter(w)
	if err != nil {
		return err
	}
	if t.files[0].name == "" {
		f := t.files[0]
		if err := nw.WriteHeader(&gonix.Header{Path: "/", Type: gonix.TypeRegular, Executable: f.exec, Size: int64(len(f.data))}); err != nil {
			return err
		}
		if _, err := io.CopyBuffer(nw, noWriterTo{bytes.NewReader(f.data)}, buf); err != nil {
			return err
		}
		return nw.Close()
	}
	if err := nw.WriteHeader(&gonix.Header{Path: "/", Type: gonix.TypeDirectory}); err != nil {
		return err
	}
	for _, f := range t.files {
		if err := nw.WriteHeader(&gonix.Header{Path: "/" + f.name, Type: gonix.TypeRegular, Executable: f.exec, Size: int64(len(f.data))}); err != nil {
			return err
		}
		if _, err := nw.Write(f.data); err != nil {
			return err
		}
	}
	return nw.Close()
}

func BenchmarkWriter(b *testing.B) {
	for _, tree := range benchTrees() {
		var nar bytes.Buffer
		if err := writeOurs(&nar, tree); err != nil {
			b.Fatal(err)
		}
		size := int64(nar.Len())
		b.Run(tree.name+"/storefs", func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if err := writeOurs(io.Discard, tree); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tree.name+"/go-nix", func(b *testing.B) {
			buf := make([]byte, copyBufSize)
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if err := writeGoNix(io.Discard, tree, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReader(b *testing.B) {
	for _, tree := range benchTrees() {
		var nar bytes.Buffer
		if err := writeOurs(&nar, tree); err != nil {
			b.Fatal(err)
		}
		data := nar.Bytes()
		var sink io.Writer = noReaderFrom{io.Discard}
		b.Run(tree.name+"/storefs", func(b *testing.B) {
			buf := make([]byte, copyBufSize)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				r := NewReader(bytes.NewReader(data))
				for {
					h, err := r.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if h.Type == TypeRegular {
						if _, err := io.CopyBuffer(sink, r, buf); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
		})
		b.Run(tree.name+"/go-nix", func(b *testing.B) {
			buf := make([]byte, copyBufSize)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				r, err := gonix.NewReader(bytes.NewReader(data))
				if err != nil {
					b.Fatal(err)
				}
				for {
					h, err := r.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if h.Type == gonix.TypeRegular {
						if _, err := io.CopyBuffer(sink, r, buf); err != nil {
							b.Fatal(err)
						}
					}
				}
				r.Close()
			}
		})
	}
}
