package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

var modes = []store.Mode{store.ModeBlob, store.ModeDisk, store.ModeChunk}

// newStore creates a store in a temp dir. Its cleanup checks the registry
// invariants and, with contents, every NAR hash: every test leaves a sound
// store or fails.
func newStore(t *testing.T, mode store.Mode, storeDir string) *store.Store {
	t.Helper()
	s, err := store.Init(filepath.Join(t.TempDir(), "state"), store.InitOptions{Mode: mode, StoreDir: storeDir}, store.Options{})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() {
		checkSound(t, s)
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func checkSound(t *testing.T, s *store.Store) {
	t.Helper()
	rep, err := s.Verify(context.Background(), store.VerifyOptions{Contents: true})
	if err != nil {
		t.Errorf("Verify: %v", err)
		return
	}
	for _, p := range rep.Problems {
		t.Errorf("verify: %s", p)
	}
}

// fixture builds the standard test tree (the one the Nix oracle values
// below were computed for).
func fixture(t *testing.T, dir string) string {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(dir, 0o755))
	w := func(rel, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(content), mode))
		must(os.Chmod(p, mode))
	}
	w("regular.txt", "hello world\n", 0o644)
	w("run.sh", "#!/bin/sh\necho hi\n", 0o755)
	must(os.Symlink("regular.txt", filepath.Join(dir, "link-rel")))
	must(os.Symlink("/nonexistent/target", filepath.Join(dir, "link-abs-dangling")))
	must(os.Mkdir(filepath.Join(dir, "empty-dir"), 0o755))
	w("nested/a/b/c/deep.txt", "deep\n", 0o644)
	must(os.Symlink("../../../regular.txt", filepath.Join(dir, "nested/a/b/up-link")))
	w("name with spaces ü é 日本.txt", "unicode + spaces\n", 0o644)
	w("empty-file", "", 0o644)
	w("Zupper", "upper\n", 0o644)
	w("_under", "under\n", 0o644)
	w("pad-1000", strings.Repeat("x", 1000), 0o644)
	w("eight-bytes", "12345678", 0o644)
	return dir
}

func dump(t *testing.T, p string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := nar.DumpPath(&b, p); err != nil {
		t.Fatalf("DumpPath(%s): %v", p, err)
	}
	return b.Bytes()
}

func export(t *testing.T, s *store.Store, p string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Export(context.Background(), &b, p); err != nil {
		t.Fatalf("Export(%s): %v", p, err)
	}
	return b.Bytes()
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func add(t *testing.T, s *store.Store, src string, o store.AddOptions) string {
	t.Helper()
	p, err := s.Add(context.Background(), src, o)
	if err != nil {
		t.Fatalf("Add(%s): %v", src, err)
	}
	return p
}
