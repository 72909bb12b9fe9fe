//go:build unix

package nar

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	gonix "github.com/nix-community/go-nix/pkg/nar"
)

// goNixHeaders parses an archive with go-nix's reader, mapping its paths
// ("/", "/a/b") to ours ("", "a/b").
func goNixHeaders(data []byte) ([]Header, map[string]string, error) {
	r, err := gonix.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	var hs []Header
	contents := map[string]string{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			return hs, contents, nil
		}
		if err != nil {
			return hs, contents, err
		}
		var typ Type
		switch h.Type {
		case gonix.TypeRegular:
			typ = TypeRegular
		case gonix.TypeDirectory:
			typ = TypeDirectory
		case gonix.TypeSymlink:
			typ = TypeSymlink
		}
		p := strings.TrimPrefix(h.Path, "/")
		hs = append(hs, Header{Path: p, Type: typ, Executable: h.Executable, Size: h.Size, LinkTarget: h.LinkTarget})
		if typ == TypeRegular {
			b, err := io.ReadAll(r)
			if err != nil {
				return hs, contents, err
			}
			contents[p] = string(b)
		}
	}
}

// TestDumpPathGoNix compares DumpPath with go-nix's DumpPath byte for byte.
func TestDumpPathGoNix(t *testing.T) {
	root := makeTree(t, t.TempDir())
	for _, sub := range []string{"", "kilo", "eight-bytes", "_under", "exec.sh", "link-rel", "link-abs", "link-dangling", "empty-dir", "nested", "name with spaces ü é 日本.txt"} {
		p := filepath.Join(root, sub)
		var want bytes.Buffer
		if err := gonix.DumpPath(&want, p); err != nil {
			t.Fatalf("go-nix DumpPath(%q) = %v", sub, err)
		}
		if got := dumpBytes(t, p); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("DumpPath(%q) differs from go-nix DumpPath (%d vs %d bytes)", sub, len(got), want.Len())
		}
	}
}

// TestGoNixReadsOurs checks go-nix's reader parses our Writer's output (and
// our dump of the test tree) into the headers and contents our reader sees.
func TestGoNixReadsOurs(t *testing.T) {
	inputs := map[string][]byte{"tree": dumpBytes(t, makeTree(t, t.TempDir()))}
	var buf bytes.Buffer
	if err := buildMulti(NewWriter(&buf)); err != nil {
		t.Fatal(err)
	}
	inputs["multi"] = buf.Bytes()
	for _, c := range narCases() {
		if c.ok {
			inputs[c.name] = c.data
		}
	}
	for name, data := range inputs {
		wantH, wantC, err := readAll(t, data)
		if err != nil {
			t.Fatalf("%s: Next() = %v", name, err)
		}
		gotH, gotC, err := goNixHeaders(data)
		if err != nil {
			t.Fatalf("%s: go-nix Next() = %v", name, err)
		}
		if fmt.Sprint(gotH) != fmt.Sprint(wantH) {
			t.Errorf("%s: go-nix headers = %+v; want %+v", name, gotH, wantH)
		}
		if fmt.Sprint(gotC) != fmt.Sprint(wantC) {
			t.Errorf("%s: go-nix contents = %q; want %q", name, gotC, wantC)
		}
	}
}

// goNixAccepts lists the malformed cases go-nix's reader (v0.0.0-20250101)
// accepts; we reject all of them. Kept as documentation of why go-nix is
// only a cross-check: if an upgrade makes go-nix stricter, trim the list.
var goNixAccepts = map[string]bool{
	"duplicate-entry":      true, // its order check is "previous path <= path"
	"name-dot":             true, // IsValidNodeName only checks '/' and NUL
	"name-dotdot":          true,
	"name-empty":           true,
	"trailing-garbage":     true, // never looks past the root node
	"truncated":            true, // EOF at the start of a token reads as a clean end of archive
	"symlink-empty-target": true,
	"nonzero-padding-name": true, // padding of tokens is checked in a deferred Close whose error is dropped
}

// TestGoNixStrictness records which malformed cases go-nix's reader accepts.
func TestGoNixStrictness(t *testing.T) {
	for _, c := range narCases() {
		if c.ok {
			continue
		}
		_, _, err := goNixHeaders(c.data)
		if accepted := err == nil; accepted != goNixAccepts[c.name] {
			t.Errorf("go-nix on %s: err = %v; goNixAccepts says accepted=%v", c.name, err, goNixAccepts[c.name])
		} else {
			t.Logf("go-nix on %s: %v", c.name, err)
		}
	}
	// Truncation: go-nix takes EOF at the start of a token for a clean end,
	// and never notices missing token padding (see goNixAccepts).
	data := multiNAR()
	var accepted []int
	n := 0
	for i := 0; i < len(data); i++ {
		if _, _, err := goNixHeaders(data[:i]); err == nil {
			n++
			if len(accepted) < 8 {
				accepted = append(accepted, i)
			}
		}
	}
	t.Logf("go-nix accepts %d of the %d truncations of a %d-byte archive, e.g. at %v", n, len(data), len(data), accepted)
}
