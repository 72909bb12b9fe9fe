//go:build unix

package nar

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const fixtureFile = "testdata/fixture.sha256"

// makeTree builds a deterministic tree under dir/tree and returns its path.
// Only what a NAR records is fixed: names, contents, S_IXUSR, symlink
// targets. Changing it requires regenerating testdata/fixture.sha256.
func makeTree(t testing.TB, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "tree")
	kilo := make([]byte, 1000)
	for i := range kilo {
		kilo[i] = byte(i % 251)
	}
	files := []struct {
		path string
		data string
		mode os.FileMode
	}{
		{"Zupper", "upper case sorts first\n", 0o644},
		{"_under", "", 0o644},                               // empty file
		{"eight-bytes", "12345678", 0o644},                  // no padding
		{"exec.sh", "#!/bin/sh\necho hi\n", 0o755},          // executable
		{"user-exec-only", "u\n", 0o700},                    // S_IXUSR only: executable
		{"group-exec-only", "g\n", 0o610},                   // S_IXGRP only: not executable
		{"kilo", string(kilo), 0o644},                       // 1000 bytes
		{"name with spaces ü é 日本.txt", "unicode\n", 0o644}, // raw UTF-8 bytes
		{"nested/a/b/c/deep", "deep\n", 0o644},
		{"nested/a/x.txt", "x\n", 0o644},
		{"nested/a/ä", "", 0o755}, // empty executable
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil { // umask-proof
			t.Fatal(err)
		}
	}
	for _, d := range []string{"empty-dir", "nested/a/b/empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"link-rel":      "exec.sh",
		"link-abs":      "/etc/hostname",
		"link-dangling": "does/not/exist",
		"link-dir":      "nested/a",
		"nested/up":     "../Zupper",
		"link-spaces":   "name with spaces ü é 日本.txt",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func dumpBytes(t testing.TB, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := DumpPath(&buf, path); err != nil {
		t.Fatalf("DumpPath(%s) = %v", path, err)
	}
	return buf.Bytes()
}

// TestDumpPathFixture compares the dump of makeTree with the sha256 and size
// that `nix-store --dump` produced for it, so the comparison with Nix holds
// on machines without Nix. Regenerate (needs nix-store on PATH) with
//
//	go test ./nar/ -run TestDumpPathFixture -update
func TestDumpPathFixture(t *testing.T) {
	root := makeTree(t, t.TempDir())
	if *update {
		out, err := exec.Command("nix-store", "--dump", root).Output()
		if err != nil {
			t.Fatalf("nix-store --dump: %v (-update needs nix-store on PATH)", err)
		}
		sum := sha256.Sum256(out)
		content := fmt.Sprintf("# sha256 and size of `nix-store --dump` of the tree built by makeTree (dump_test.go).\n"+
			"# Regenerate with: go test ./nar/ -run TestDumpPathFixture -update   (needs nix-store on PATH)\n"+
			"%x %d\n", sum, len(out))
		if err := os.WriteFile(fixtureFile, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(fixtureFile)
	if err != nil {
		t.Fatal(err)
	}
	var wantSum string
	var wantSize int
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("%s: bad line %q", fixtureFile, line)
		}
		wantSum = f[0]
		if wantSize, err = strconv.Atoi(f[1]); err != nil {
			t.Fatalf("%s: bad size %q", fixtureFile, f[1])
		}
	}
	got := dumpBytes(t, root)
	sum := sha256.Sum256(got)
	if hex.EncodeToString(sum[:]) != wantSum || len(got) != wantSize {
		t.Errorf("DumpPath(tree) = sha256 %x, %d bytes; want %s, %d bytes (%s)", sum, len(got), wantSum, wantSize, fixtureFile)
	}
}

// TestDumpPathNixStore compares DumpPath with `nix-store --dump` byte for
// byte, for the whole tree and for single nodes of it.
func TestDumpPathNixStore(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed")
	}
	root := makeTree(t, t.TempDir())
	for _, sub := range []string{"", "kilo", "eight-bytes", "_under", "exec.sh", "group-exec-only", "link-dangling", "link-abs", "empty-dir", "nested"} {
		p := filepath.Join(root, sub)
		want, err := exec.Command("nix-store", "--dump", p).Output()
		if err != nil {
			t.Fatalf("nix-store --dump %s: %v", p, err)
		}
		if got := dumpBytes(t, p); !bytes.Equal(got, want) {
			t.Errorf("DumpPath(%q) differs from nix-store --dump (%d vs %d bytes)", sub, len(got), len(want))
		}
	}
}

// TestDumpPathRoundTrip checks the dump parses and re-encodes exactly, and
// that the headers describe the tree.
func TestDumpPathRoundTrip(t *testing.T) {
	root := makeTree(t, t.TempDir())
	data := dumpBytes(t, root)
	hs, contents, err := readAll(t, data)
	if err != nil {
		t.Fatalf("Next() = %v; want success", err)
	}
	byPath := map[string]Header{}
	for _, h := range hs {
		byPath[h.Path] = h
	}
	checks := []struct {
		path string
		want Header
	}{
		{"", Header{Type: TypeDirectory}},
		{"exec.sh", Header{Type: TypeRegular, Executable: true, Size: 18}},
		{"user-exec-only", Header{Type: TypeRegular, Executable: true, Size: 2}},
		{"group-exec-only", Header{Type: TypeRegular, Size: 2}},
		{"kilo", Header{Type: TypeRegular, Size: 1000}},
		{"nested/a/ä", Header{Type: TypeRegular, Executable: true}},
		{"nested/a/b/empty", Header{Type: TypeDirectory}},
		{"link-dangling", Header{Type: TypeSymlink, LinkTarget: "does/not/exist"}},
		{"nested/up", Header{Type: TypeSymlink, LinkTarget: "../Zupper"}},
	}
	for _, c := range checks {
		c.want.Path = c.path
		if got := byPath[c.path]; got != c.want {
			t.Errorf("header %q = %+v; want %+v", c.path, got, c.want)
		}
	}
	if contents["nested/a/b/c/deep"] != "deep\n" {
		t.Errorf("contents of nested/a/b/c/deep = %q; want %q", contents["nested/a/b/c/deep"], "deep\n")
	}
	if out, err := copyBytes(data); err != nil || !bytes.Equal(out, data) {
		t.Errorf("Copy(dump) = %v; want byte-exact round trip", err)
	}
}

func TestDumpPathUnsupported(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, p := range []string{fifo, dir} {
		var buf bytes.Buffer
		err := DumpPath(&buf, p)
		if err == nil || !strings.Contains(err.Error(), "unsupported file type") || !strings.Contains(err.Error(), fifo) {
			t.Errorf("DumpPath(%s) = %v; want unsupported file type naming %s", p, err, fifo)
		}
	}
	if err := DumpPath(&bytes.Buffer{}, filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("DumpPath(missing) = %v; want not-exist error", err)
	}
}
