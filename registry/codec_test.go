package registry_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
)

func digest(s string) registry.Digest { return sha256.Sum256([]byte(s)) }

// sampleDirs returns well-formed directories covering every node type.
func sampleDirs() map[string]*registry.Directory {
	return map[string]*registry.Directory{
		"empty": {},
		"one file": {Entries: []registry.Entry{
			{Name: "hello", Node: registry.Node{Type: registry.TypeRegular, Size: 5, Key: digest("hello")}},
		}},
		"every type": {Entries: []registry.Entry{
			{Name: "bin", Node: registry.Node{Type: registry.TypeDirectory, Key: digest("bin")}},
			{Name: "empty-file", Node: registry.Node{Type: registry.TypeRegular, Size: 0, Key: digest("")}},
			{Name: "huge", Node: registry.Node{Type: registry.TypeRegular, Size: math.MaxInt64, Key: digest("huge")}},
			{Name: "link", Node: registry.Node{Type: registry.TypeSymlink, Target: "../bin/sh"}},
			{Name: "link-empty", Node: registry.Node{Type: registry.TypeSymlink, Target: ""}},
			{Name: "run", Node: registry.Node{Type: registry.TypeRegular, Executable: true, Size: 1 << 20, Key: digest("run")}},
		}},
		"bytewise order": {Entries: []registry.Entry{
			{Name: "B", Node: registry.Node{Type: registry.TypeSymlink, Target: "x"}},
			{Name: "a", Node: registry.Node{Type: registry.TypeSymlink, Target: "x"}},
			{Name: "a.b", Node: registry.Node{Type: registry.TypeSymlink, Target: "x"}},
			{Name: "ab", Node: registry.Node{Type: registry.TypeSymlink, Target: "x"}},
			{Name: "\xc3\xa9t\xc3\xa9", Node: registry.Node{Type: registry.TypeSymlink, Target: "\xff"}},
		}},
	}
}

func cloneDir(d *registry.Directory) *registry.Directory {
	return &registry.Directory{Entries: slices.Clone(d.Entries)}
}

func sameDir(a, b *registry.Directory) bool {
	if len(a.Entries) == 0 && len(b.Entries) == 0 {
		return true
	}
	return reflect.DeepEqual(a.Entries, b.Entries)
}

func TestDirectoryRoundTrip(t *testing.T) {
	for name, dir := range sampleDirs() {
		t.Run(name, func(t *testing.T) {
			enc, d := registry.EncodeDirectory(dir)
			if want := registry.Digest(sha256.Sum256(enc)); d != want {
				t.Errorf("EncodeDirectory digest = %x; want sha256 of the encoding %x", d, want)
			}
			// An equal directory built separately encodes equally.
			enc2, d2 := registry.EncodeDirectory(cloneDir(dir))
			if !bytes.Equal(enc, enc2) || d != d2 {
				t.Errorf("EncodeDirectory of an equal directory = %x, %x; want %x, %x", enc2, d2, enc, d)
			}
			got, err := registry.DecodeDirectory(enc)
			if err != nil {
				t.Fatalf("DecodeDirectory(%x) = %v; want no error", enc, err)
			}
			if !sameDir(got, dir) {
				t.Errorf("DecodeDirectory(EncodeDirectory(d)) = %+v; want %+v", got, dir)
			}
		})
	}
}

func TestDirectoryEncodingDistinguishes(t *testing.T) {
	base := registry.Entry{Name: "f", Node: registry.Node{Type: registry.TypeRegular, Size: 1, Key: digest("f")}}
	variants := map[string]func(e *registry.Entry){
		"base":       func(e *registry.Entry) {},
		"name":       func(e *registry.Entry) { e.Name = "g" },
		"executable": func(e *registry.Entry) { e.Executable = true },
		"size":       func(e *registry.Entry) { e.Size = 2 },
		"key":        func(e *registry.Entry) { e.Key[31] ^= 1 },
		"directory":  func(e *registry.Entry) { e.Type = registry.TypeDirectory; e.Size = 0 },
		"symlink": func(e *registry.Entry) {
			*e = registry.Entry{Name: "f", Node: registry.Node{Type: registry.TypeSymlink, Target: "f"}}
		},
	}
	seen := map[registry.Digest]string{}
	for name, change := range variants {
		e := base
		change(&e)
		_, d := registry.EncodeDirectory(&registry.Directory{Entries: []registry.Entry{e}})
		if other, ok := seen[d]; ok {
			t.Errorf("variants %q and %q encode to the same digest %x", name, other, d)
		}
		seen[d] = name
	}
}

// build assembles a raw directory record from parts (bytes, strings, or
// uvarints given as uint64).
func build(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case int:
			b = append(b, byte(p))
		case uint64:
			b = binary.AppendUvarint(b, p)
		case string:
			b = binary.AppendUvarint(b, uint64(len(p)))
			b = append(b, p...)
		case []byte:
			b = append(b, p...)
		case registry.Digest:
			b = append(b, p[:]...)
		default:
			panic("build: bad part")
		}
	}
	return b
}

func TestDecodeDirectoryRejectsCorrupt(t *testing.T) {
	sym := func(name string) registry.Entry {
		return registry.Entry{Name: name, Node: registry.Node{Type: registry.TypeSymlink, Target: "t"}}
	}
	encode := func(entries ...registry.Entry) []byte {
		// EncodeDirectory does not validate, so it makes malformed records too.
		enc, _ := registry.EncodeDirectory(&registry.Directory{Entries: entries})
		return enc
	}
	valid := encode(sym("a"))
	k := digest("k")
	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version 0", build(0, uint64(0))},
		{"version 2", build(2, uint64(0))},
		{"no count", build(1)},
		{"count overflows", build(1, bytes.Repeat([]byte{0xff}, 11))},
		{"count exceeds entries", build(1, uint64(2), "a", 4, "t")},
		{"count exceeds length", build(1, uint64(1<<40))},
		{"unsorted names", encode(sym("b"), sym("a"))},
		{"unsorted bytewise", encode(sym("a"), sym("B"))},
		{"duplicate names", encode(sym("a"), sym("a"))},
		{"empty name", encode(sym(""))},
		{"empty name after another", encode(sym("a"), sym(""))},
		{"no-node tag 0", build(1, uint64(1), "a", 0)},
		{"node type 0 via encoder", encode(registry.Entry{Name: "a"})},
		{"unknown tag 5", build(1, uint64(1), "a", 5, "t")},
		{"unknown tag 0xff", build(1, uint64(1), "a", 0xff)},
		{"name longer than record", build(1, uint64(1), uint64(100), "a")},
		{"symlink target longer than record", build(1, uint64(1), "a", 4, uint64(100))},
		{"short key", build(1, uint64(1), "a", 3, k[:31])},
		{"regular without size", build(1, uint64(1), "a", 1)},
		{"size overflows", build(1, uint64(1), "a", 1, bytes.Repeat([]byte{0xff}, 11), k)},
		{"trailing byte", append(slices.Clone(valid), 0)},
		{"trailing bytes after empty", build(1, uint64(0), "junk")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := registry.DecodeDirectory(tt.in)
			if err == nil {
				t.Errorf("DecodeDirectory(%x) = %+v, nil; want an error", tt.in, dir)
			}
			if dir != nil {
				t.Errorf("DecodeDirectory(%x) returned a directory %+v with error %v; want nil", tt.in, dir, err)
			}
		})
	}
}

func TestDecodeDirectoryRejectsTruncated(t *testing.T) {
	for name, dir := range sampleDirs() {
		enc, _ := registry.EncodeDirectory(dir)
		for n := range len(enc) {
			if got, err := registry.DecodeDirectory(enc[:n]); err == nil {
				t.Errorf("%s: DecodeDirectory(encoding truncated to %d of %d bytes) = %+v, nil; want an error", name, n, len(enc), got)
			}
		}
	}
}

// Directory records are content-addressed: a record must have exactly one
// encoding, or the same directory gets two digests (and a record that is not
// canonical re-encodes to bytes whose digest is not its key).
func TestDecodeDirectoryRejectsNonCanonical(t *testing.T) {
	k := digest("k")
	tests := []struct {
		name string
		in   []byte
	}{
		{"count 0 as two bytes", build(1, []byte{0x80, 0x00})},
		{"count 1 as two bytes", build(1, []byte{0x81, 0x00}, "a", 4, "t")},
		{"name length as two bytes", build(1, uint64(1), []byte{0x81, 0x00}, "a"[0], 4, "t")},
		{"size as two bytes", build(1, uint64(1), "a", 1, []byte{0x85, 0x00}, k)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := registry.DecodeDirectory(tt.in)
			if err != nil {
				return
			}
			if enc, _ := registry.EncodeDirectory(dir); !bytes.Equal(enc, tt.in) {
				t.Errorf("DecodeDirectory(%x) = %+v, nil; it re-encodes to %x: want an error for a non-canonical record", tt.in, dir, enc)
			}
		})
	}
}

// A NAR directory entry name is never empty, ".", "..", and never contains
// "/" or NUL (Nix's parser refuses them). A record naming one is corrupt.
func TestDecodeDirectoryRejectsBadNames(t *testing.T) {
	for _, name := range []string{".", "..", "a/b", "/", "a\x00b"} {
		enc, _ := registry.EncodeDirectory(&registry.Directory{Entries: []registry.Entry{
			{Name: name, Node: registry.Node{Type: registry.TypeSymlink, Target: "t"}},
		}})
		if dir, err := registry.DecodeDirectory(enc); err == nil {
			t.Errorf("DecodeDirectory(record naming %q) = %+v, nil; want an error", name, dir)
		}
	}
}

func FuzzDecodeDirectory(f *testing.F) {
	for _, dir := range sampleDirs() {
		enc, _ := registry.EncodeDirectory(dir)
		f.Add(enc)
		f.Add(enc[:len(enc)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0})
	f.Add(build(1, uint64(2), "a", 4, "t", "b", 3, digest("b")))
	f.Add(build(1, uint64(1), "a", 7))
	f.Fuzz(func(t *testing.T, in []byte) {
		dir, err := registry.DecodeDirectory(in)
		if err != nil {
			if dir != nil {
				t.Fatalf("DecodeDirectory(%x) = %+v, %v; want a nil directory with the error", in, dir, err)
			}
			return
		}
		enc, d := registry.EncodeDirectory(dir)
		if !bytes.Equal(enc, in) {
			t.Fatalf("DecodeDirectory(%x) = %+v, which re-encodes to %x; want the input bytes", in, dir, enc)
		}
		if d != sha256.Sum256(in) {
			t.Fatalf("EncodeDirectory digest %x is not the sha256 of the encoding", d)
		}
	})
}

// normalized is what the registry gives back for pi: seconds-resolution UTC
// time and sorted, deduplicated references (nil when none).
func normalized(pi *registry.PathInfo) *registry.PathInfo {
	want := *pi
	want.RegistrationTime = time.Unix(pi.RegistrationTime.Unix(), 0).UTC()
	want.References = nil
	if len(pi.References) > 0 {
		want.References = slices.Compact(slices.Sorted(slices.Values(pi.References)))
	}
	return &want
}

func TestPathInfoRoundTrip(t *testing.T) {
	base := registrytest.Name("base")
	// the "every type" directory names a child directory "bin": store it too.
	binRec, binKey := registry.EncodeDirectory(&registry.Directory{})
	everyType := sampleDirs()["every type"]
	everyType.Entries[0].Key = binKey
	dirRec, dirKey := registry.EncodeDirectory(everyType)

	full := func(path string) *registry.PathInfo {
		return &registry.PathInfo{
			Path:             path,
			NarHash:          digest("nar " + path),
			NarSize:          123456789,
			References:       []string{base, path},
			Deriver:          registrytest.Name("thing.drv"),
			RegistrationTime: time.Date(2024, 2, 29, 13, 14, 15, 999999999, time.FixedZone("X", 3600)),
			CA:               "fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
		}
	}
	tests := []struct {
		name string
		mode string
		info func(path string) *registry.PathInfo
		dirs map[registry.Digest][]byte
	}{
		{"disk minimal", "disk", func(p string) *registry.PathInfo { return &registry.PathInfo{Path: p} }, nil},
		{"disk full", "disk", full, nil},
		{"disk unsorted duplicate references", "disk", func(p string) *registry.PathInfo {
			pi := full(p)
			pi.References = []string{p, base, p}
			return pi
		}, nil},
		{"disk old and extreme", "disk", func(p string) *registry.PathInfo {
			pi := full(p)
			pi.RegistrationTime = time.Unix(-86400*365, 0)
			pi.NarSize = math.MaxInt64
			pi.Deriver, pi.CA = "", ""
			return pi
		}, nil},
		{"blob regular root", "blob", func(p string) *registry.PathInfo {
			pi := full(p)
			pi.Root = registry.Node{Type: registry.TypeRegular, Size: 77, Key: digest("file")}
			return pi
		}, nil},
		{"blob executable root", "blob", func(p string) *registry.PathInfo {
			pi := full(p)
			pi.Root = registry.Node{Type: registry.TypeRegular, Executable: true, Size: 0, Key: digest("")}
			return pi
		}, nil},
		{"blob symlink root", "blob", func(p string) *registry.PathInfo {
			pi := full(p)
			pi.Root = registry.Node{Type: registry.TypeSymlink, Target: "/gnu/store/" + base + "/bin"}
			return pi
		}, nil},
		{"blob directory root", "blob", func(p string) *registry.PathInfo {
			pi := full(p)
			pi.Root = registry.Node{Type: registry.TypeDirectory, Key: dirKey}
			return pi
		}, map[registry.Digest][]byte{dirKey: dirRec, binKey: binRec}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := registrytest.New(t, tt.mode)
			baseInfo := registrytest.Info(base)
			if tt.mode == "blob" {
				baseInfo = registrytest.BlobInfo(base)
			}
			registrytest.MustRegister(t, r, registrytest.Reg(baseInfo))
			path := registrytest.Name("item")
			pi := tt.info(path)
			orig := *pi
			orig.References = slices.Clone(pi.References)
			added := registrytest.MustRegister(t, r, []registry.Registration{{Info: pi, Dirs: tt.dirs}})
			if want := []string{path}; !slices.Equal(added, want) {
				t.Errorf("Register added %q; want %q", added, want)
			}
			if !reflect.DeepEqual(*pi, orig) {
				t.Errorf("Register modified its argument: %+v; was %+v", *pi, orig)
			}
			got, err := r.Get(path)
			if err != nil {
				t.Fatalf("Get(%q) = %v; want no error", path, err)
			}
			if want := normalized(&orig); !reflect.DeepEqual(got, want) {
				t.Errorf("Get(%q) = %+v; want %+v", path, got, want)
			}
			// Reader.Get in a snapshot agrees.
			err = r.View(func(rd registry.Reader) error {
				got2, err := rd.Get(path)
				if err != nil {
					return err
				}
				if !reflect.DeepEqual(got2, got) {
					t.Errorf("Reader.Get(%q) = %+v; want %+v", path, got2, got)
				}
				return nil
			})
			if err != nil {
				t.Errorf("View: %v", err)
			}
			for d, rec := range tt.dirs {
				dir, err := r.Directory(d)
				if err != nil {
					t.Errorf("Directory(%x) = %v; want no error", d, err)
					continue
				}
				if enc, _ := registry.EncodeDirectory(dir); !bytes.Equal(enc, rec) {
					t.Errorf("Directory(%x) = %+v; encodes to %x; want %x", d, dir, enc, rec)
				}
			}
		})
	}
}

func TestDirectoryMissing(t *testing.T) {
	r := registrytest.New(t, "blob")
	d := digest("nowhere")
	dir, err := r.Directory(d)
	if !errors.Is(err, registry.ErrMissingDirectory) {
		t.Errorf("Directory(%x) = %+v, %v; want ErrMissingDirectory", d, dir, err)
	}
	err = r.View(func(rd registry.Reader) error {
		_, err := rd.Directory(d)
		return err
	})
	if !errors.Is(err, registry.ErrMissingDirectory) {
		t.Errorf("Reader.Directory(%x) = %v; want ErrMissingDirectory", d, err)
	}
}

// Identical directories are stored once, under their digest.
func TestDirectoriesSharedBetweenPaths(t *testing.T) {
	r := registrytest.New(t, "blob")
	leaf := &registry.Directory{Entries: []registry.Entry{
		{Name: "f", Node: registry.Node{Type: registry.TypeRegular, Size: 3, Key: digest("f")}},
	}}
	leafRec, leafKey := registry.EncodeDirectory(leaf)
	top := &registry.Directory{Entries: []registry.Entry{
		{Name: "a", Node: registry.Node{Type: registry.TypeDirectory, Key: leafKey}},
		{Name: "b", Node: registry.Node{Type: registry.TypeDirectory, Key: leafKey}},
	}}
	topRec, topKey := registry.EncodeDirectory(top)
	var batch []registry.Registration
	for _, n := range []string{"one", "two"} {
		pi := registrytest.Info(registrytest.Name(n))
		pi.Root = registry.Node{Type: registry.TypeDirectory, Key: topKey}
		batch = append(batch, registry.Registration{Info: pi, Dirs: map[registry.Digest][]byte{topKey: topRec, leafKey: leafRec}})
	}
	registrytest.MustRegister(t, r, batch)
	for d, want := range map[registry.Digest]*registry.Directory{topKey: top, leafKey: leaf} {
		got, err := r.Directory(d)
		if err != nil || !sameDir(got, want) {
			t.Errorf("Directory(%x) = %+v, %v; want %+v", d, got, err, want)
		}
	}
}
