package nar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// readAll parses an archive with Next and reads every file's contents.
// It returns the headers and the contents of the regular files.
func readAll(t *testing.T, data []byte) ([]Header, map[string]string, error) {
	t.Helper()
	r := NewReader(bytes.NewReader(data))
	var hs []Header
	contents := map[string]string{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			if r.Offset() != int64(len(data)) {
				t.Errorf("Offset() = %d at EOF; want %d", r.Offset(), len(data))
			}
			return hs, contents, nil
		}
		if err != nil {
			return hs, contents, err
		}
		hs = append(hs, *h)
		if h.Type == TypeRegular {
			b, err := io.ReadAll(r)
			if err != nil {
				return hs, contents, err
			}
			contents[h.Path] = string(b)
		}
	}
}

// wantNARError checks err is an *Error and returns it.
func wantNARError(t *testing.T, err error, what string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: err = nil; want *Error", what)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: err = %v (%T); want *Error", what, err, err)
	}
	return e
}

func TestCasesReader(t *testing.T) {
	for _, c := range narCases() {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := readAll(t, c.data)
			if c.ok {
				if err != nil {
					t.Fatalf("Next() = %v; want success", err)
				}
				return
			}
			e := wantNARError(t, err, "Next()")
			t.Logf("%s: %v", c.name, e)
		})
	}
}

func TestCasesCopy(t *testing.T) {
	for _, c := range narCases() {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			n, err := Copy(&out, bytes.NewReader(c.data))
			if !c.ok {
				wantNARError(t, err, "Copy()")
				return
			}
			if err != nil {
				t.Fatalf("Copy() = %v; want success", err)
			}
			if n != int64(out.Len()) {
				t.Errorf("Copy() = %d; wrote %d bytes", n, out.Len())
			}
			if !bytes.Equal(out.Bytes(), c.data) {
				t.Errorf("Copy() output differs from input:\n got %x\nwant %x", out.Bytes(), c.data)
			}
		})
	}
}

func TestErrorDetails(t *testing.T) {
	cases := map[string][]byte{}
	for _, c := range narCases() {
		cases[c.name] = c.data
	}
	nested := cases["unsorted-nested"]
	tests := []struct {
		name   string
		offset int64
		path   string
		msg    string
		eof    bool
	}{
		{"bad-magic", 0, "", "bad magic", false},
		{"unsorted-entries", 320, "a", `names not sorted ("a" after "b")`, false},
		{"unsorted-nested", int64(bytes.LastIndex(nested, toks("name", "a")) + 16), "x/a", `names not sorted ("a" after "b")`, false},
		{"duplicate-entry", 320, "a", `duplicate entry name "a"`, false},
		{"name-dot", 128, ".", `invalid entry name "."`, false},
		{"name-dotdot", 128, "..", `invalid entry name ".."`, false},
		{"name-slash", 128, "a/b", `contains '/'`, false},
		{"name-empty", 128, "", "empty entry name", false},
		{"name-nul", 128, "a\x00b", "contains NUL", false},
		{"trailing-garbage", 120, "", "trailing data after NAR", false},
		{"truncated", 104, "", "unexpected end of archive", true},
		{"executable-marker-nonempty", 96, "", `executable marker must be empty, got "x"`, false},
		{"executable-after-contents", 96, "", `expected ")" after contents, got "executable"`, false},
		{"symlink-empty-target", 88, "", "empty symlink target", false},
		{"unknown-type", 56, "", `unknown node type "fifo"`, false},
		{"nonzero-padding-contents", 99, "", "non-zero padding after contents", false},
		{"nonzero-padding-name", 128, "", "non-zero padding in entry name at offset 137", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readAll(t, cases[tt.name])
			e := wantNARError(t, err, "Next()")
			if e.Offset != tt.offset || e.Path != tt.path || !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("Next() = %#v; want offset %d, path %q, msg containing %q", e, tt.offset, tt.path, tt.msg)
			}
			if got := errors.Is(err, io.ErrUnexpectedEOF); got != tt.eof {
				t.Errorf("errors.Is(%v, io.ErrUnexpectedEOF) = %v; want %v", err, got, tt.eof)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Offset: 136, Path: "a/b", Msg: `names not sorted ("b" after "c")`}, `nar: offset 136, entry "a/b": names not sorted ("b" after "c")`},
		{&Error{Offset: 0, Msg: "bad magic (not a NAR)"}, `nar: offset 0: bad magic (not a NAR)`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q; want %q", got, tt.want)
		}
	}
}

func TestTypeString(t *testing.T) {
	for typ, want := range map[Type]string{TypeRegular: "regular", TypeDirectory: "directory", TypeSymlink: "symlink", 0: "Type(0)", 9: "Type(9)"} {
		if got := typ.String(); got != want {
			t.Errorf("Type(%d).String() = %q; want %q", uint8(typ), got, want)
		}
	}
}

func TestReaderHeaders(t *testing.T) {
	hs, contents, err := readAll(t, multiNAR())
	if err != nil {
		t.Fatalf("Next() = %v; want success", err)
	}
	want := []Header{
		{Path: "", Type: TypeDirectory},
		{Path: "a", Type: TypeRegular, Size: 6},
		{Path: "b", Type: TypeDirectory},
		{Path: "b/c", Type: TypeRegular, Executable: true, Size: 18},
		{Path: "b/d", Type: TypeSymlink, LinkTarget: "../a"},
		{Path: "b/e", Type: TypeDirectory},
		{Path: "eight", Type: TypeRegular, Size: 8},
		{Path: "z", Type: TypeRegular, Executable: true},
	}
	if fmt.Sprint(hs) != fmt.Sprint(want) {
		t.Errorf("headers = %+v; want %+v", hs, want)
	}
	wantContents := map[string]string{"a": "hello\n", "b/c": "#!/bin/sh\necho hi\n", "eight": "12345678", "z": ""}
	if fmt.Sprint(contents) != fmt.Sprint(wantContents) {
		t.Errorf("contents = %q; want %q", contents, wantContents)
	}
}

// TestReaderSkip checks that unread and partially read contents are skipped
// by Next, and that Read returns io.EOF for non-files and after the end.
func TestReaderSkip(t *testing.T) {
	r := NewReader(bytes.NewReader(multiNAR()))
	var paths []string
	buf := make([]byte, 2)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next() = %v; want success", err)
		}
		paths = append(paths, h.Path)
		switch {
		case h.Type != TypeRegular:
			if n, err := r.Read(buf); n != 0 || err != io.EOF {
				t.Errorf("Read() on %s %q = %d, %v; want 0, EOF", h.Type, h.Path, n, err)
			}
		case h.Path == "b/c": // partial read
			if n, err := r.Read(buf); n != 2 || err != nil || string(buf) != "#!" {
				t.Errorf("Read() = %d, %v, %q; want 2, nil, \"#!\"", n, err, buf[:n])
			}
		case h.Path == "z": // empty file
			if n, err := r.Read(buf); n != 0 || err != io.EOF {
				t.Errorf("Read() on empty file = %d, %v; want 0, EOF", n, err)
			}
		}
	}
	if got, want := strings.Join(paths, ","), ",a,b,b/c,b/d,b/e,eight,z"; got != want {
		t.Errorf("paths = %q; want %q", got, want)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("Next() after EOF = %v; want EOF", err)
	}
}

// TestReaderPadding checks that bad padding after contents is caught both
// when the contents are read to the end and when Next skips them.
func TestReaderPadding(t *testing.T) {
	data := narOf(regNode("abc", false))
	data = corrupt(data, bytes.Index(data, []byte("abc"))+7, 0xff)

	r := NewReader(bytes.NewReader(data))
	if _, err := r.Next(); err != nil {
		t.Fatalf("Next() = %v; want success", err)
	}
	_, err := io.ReadAll(r)
	if e := wantNARError(t, err, "Read()"); e.Offset != 103 {
		t.Errorf("Read() = %v; want offset 103", e)
	}
	if _, err2 := r.Next(); err2 != err {
		t.Errorf("Next() after error = %v; want sticky %v", err2, err)
	}

	r = NewReader(bytes.NewReader(data))
	if _, err := r.Next(); err != nil {
		t.Fatalf("Next() = %v; want success", err)
	}
	_, err = r.Next()
	wantNARError(t, err, "Next() skipping contents")
}

func TestTruncationEverywhere(t *testing.T) {
	data := multiNAR()
	for i := 0; i < len(data); i++ {
		_, _, err := readAll(t, data[:i])
		e := wantNARError(t, err, fmt.Sprintf("prefix of %d bytes", i))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("prefix of %d bytes: Next() = %v; want unexpected end of archive", i, err)
		}
		if e.Offset > int64(i) {
			t.Errorf("prefix of %d bytes: Offset = %d; want <= %d", i, e.Offset, i)
		}
		if _, err := Copy(io.Discard, bytes.NewReader(data[:i])); err == nil {
			t.Errorf("prefix of %d bytes: Copy() = nil; want error", i)
		}
	}
}

// TestLimits checks the length and depth limits at their boundaries.
func TestLimits(t *testing.T) {
	deep := func(n int) []byte { // n nested directories with a file inside the innermost
		node := regNode("x", false)
		for i := 0; i < n; i++ {
			node = dirNode(ent{"d", node})
		}
		return narOf(node)
	}
	tests := []struct {
		name string
		data []byte
		msg  string // "" = valid
	}{
		{"name-255", narOf(dirNode(ent{strings.Repeat("n", 255), regNode("", false)})), ""},
		{"name-256", narOf(dirNode(ent{strings.Repeat("n", 256), regNode("", false)})), "entry name too long"},
		{"target-4095", narOf(symNode(strings.Repeat("t", 4095))), ""},
		{"target-4096", narOf(symNode(strings.Repeat("t", 4096))), "symlink target too long"},
		{"target-nul", narOf(symNode("a\x00b")), "contains NUL"},
		{"tag-33", narOf(toks("(", "type", strings.Repeat("r", 33), ")")), "token too long"},
		{"depth-256", deep(256), ""}, // the file is at depth 256
		{"depth-257", deep(257), "nesting deeper than 256"},
		{"unknown-token-dir", narOf(toks("(", "type", "directory", "entri", ")")), `expected "entry" or ")"`},
		{"unknown-token-regular", narOf(toks("(", "type", "regular", "content", "", ")")), `expected "executable" or "contents"`},
		{"unknown-token-entry", narOf(toks("(", "type", "directory", "entry", "(", "nam", "a", "node")), `expected "name"`},
		{"missing-paren", narOf(toks("type", "regular", "contents", "", ")")), `expected "("`},
		{"exec-twice", narOf(toks("(", "type", "regular", "executable", "", "executable", "", "contents", "", ")")), `expected "contents"`},
		{"symlink-extra", narOf(toks("(", "type", "symlink", "target", "a", "target", "b", ")")), `expected ")"`},
		{"entry-extra", narOf(toks("(", "type", "directory", "entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "x", ")", "x", ")", ")")), `expected ")"`},
		{"two-roots", cat(narOf(regNode("", false)), regNode("", false)), "trailing data"},
		{"huge-size", narOf(cat(toks("(", "type", "regular", "contents"), bytes.Repeat([]byte{0xff}, 8))), "too large"},
		{"huge-tag", cat(tok(Magic), bytes.Repeat([]byte{0xff}, 16)), "token too long"},
		{"magic-padding", corrupt(narOf(regNode("", false)), 23, 1), "non-zero padding in magic"},
		{"empty-input", nil, "unexpected end of archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readAll(t, tt.data)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("Next() = %v; want success", err)
				}
				if out, err := copyBytes(tt.data); err != nil || !bytes.Equal(out, tt.data) {
					t.Errorf("Copy() = %v; want byte-exact round trip", err)
				}
				return
			}
			e := wantNARError(t, err, "Next()")
			if !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("Next() = %v; want message containing %q", e, tt.msg)
			}
		})
	}
}

func copyBytes(data []byte) ([]byte, error) {
	var out bytes.Buffer
	_, err := Copy(&out, bytes.NewReader(data))
	return out.Bytes(), err
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestReaderIOError checks that I/O errors are returned as they are, not as
// *Error.
func TestReaderIOError(t *testing.T) {
	boom := errors.New("boom")
	data := multiNAR()
	r := NewReader(io.MultiReader(bytes.NewReader(data[:200]), errReader{boom}))
	var err error
	for err == nil {
		_, err = r.Next()
	}
	if err != boom {
		t.Errorf("Next() = %v; want %v", err, boom)
	}
}
