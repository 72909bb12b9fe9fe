package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/storefs/storefs/store"
)

func unhex(t *testing.T, s string) (out [32]byte) {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad hex %q", s)
	}
	copy(out[:], b)
	return out
}

// Golden vectors from the Nix documentation and Nix Pills (chapter 18).
func TestGoldenVectors(t *testing.T) {
	abc := sha256.Sum256([]byte("abc"))
	if got, want := nixbase32.EncodeToString(abc[:]), "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"; got != want {
		t.Errorf("nix32(sha256(abc)) = %s; want %s", got, want)
	}
	myfile := unhex(t, "2bfef67de873c54551d884fdab3055d84d573e654efa79db3c0d7b98883f9ee3") // NAR of "mycontent\n"
	for _, c := range []struct{ storeDir, want string }{
		{"/nix/store", "/nix/store/xv2iccirbrvklck36f1g7vldn5v58vck-myfile"},
		{"/gnu/store", "/gnu/store/2z157vc6zdjk5999jsjsy6m9zsjsaz4j-myfile"},
	} {
		if got := store.MakeSourcePath(c.storeDir, myfile, "myfile", nil); got != c.want {
			t.Errorf("MakeSourcePath(%s, myfile) = %s; want %s", c.storeDir, got, c.want)
		}
	}
	if got := store.NixHash(myfile); !strings.HasPrefix(got, "sha256:") || len(got) != 7+52 {
		t.Errorf("NixHash = %q; want sha256:<52 nix32 chars>", got)
	}
}

// The Nix Pills file and a small directory, added for real.
func TestGoldenAdd(t *testing.T) {
	dir := t.TempDir()
	myfile := filepath.Join(dir, "myfile")
	os.WriteFile(myfile, []byte("mycontent\n"), 0o644)
	ex := filepath.Join(dir, "example")
	os.Mkdir(ex, 0o755)
	os.WriteFile(filepath.Join(ex, "a"), []byte("hi\n"), 0o644)
	os.WriteFile(filepath.Join(ex, "b"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("a", filepath.Join(ex, "c"))
	for _, mode := range modes {
		s := newStore(t, mode, "/gnu/store")
		for src, want := range map[string]string{
			myfile: "/gnu/store/2z157vc6zdjk5999jsjsy6m9zsjsaz4j-myfile",
			ex:     "/gnu/store/kjypllz6n6w4hpiahpq4fq7w7aqqs86q-example",
		} {
			if got := add(t, s, src, store.AddOptions{}); got != want {
				t.Errorf("%s: Add(%s) = %s; want %s", mode, src, got, want)
			}
		}
		in, err := s.Info("/gnu/store/kjypllz6n6w4hpiahpq4fq7w7aqqs86q-example")
		if err != nil || in.NarSize != 712 {
			t.Errorf("%s: example narSize = %v, %v; want 712", mode, in, err)
		}
	}
}

func TestCheckName(t *testing.T) {
	good := []string{"a", "hello-1.0", "A+b_c?d=e.f", strings.Repeat("x", 211), "-dash"}
	bad := []string{"", ".", "..", ".hidden", "a/b", "with space", "ü", strings.Repeat("x", 212), "a\x00b"}
	for _, n := range good {
		if err := store.CheckName(n); err != nil {
			t.Errorf("CheckName(%q) = %v; want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := store.CheckName(n); err == nil {
			t.Errorf("CheckName(%q) = nil; want an error", n)
		}
	}
}

func TestSplitStorePath(t *testing.T) {
	const base = "3r2qf4l21625zzkrgzq6m276s3c1vgxq-fx"
	cases := []struct {
		in, base, rel string
		ok            bool
	}{
		{"/gnu/store/" + base, base, "", true},
		{"/gnu/store/" + base + "/a/b", base, "a/b", true},
		{"/gnu/store/" + base + "/a/../../x", base, "x", true},
		{base, base, "", true},
		{"/nix/store/" + base, "", "", false},
		{"/gnu/store/3r2qf4l21625zzkrgzq6m276s3c1vgxe-fx", "", "", false}, // 'e' is not nix32
		{"/gnu/store/short-fx", "", "", false},
		{"/gnu/store/" + base[:33] + ".x", "", "", false},
	}
	for _, c := range cases {
		b, r, err := store.SplitStorePath("/gnu/store", c.in)
		if (err == nil) != c.ok || b != c.base || r != c.rel {
			t.Errorf("SplitStorePath(%q) = %q, %q, %v; want %q, %q, ok=%v", c.in, b, r, err, c.base, c.rel, c.ok)
		}
	}
}

func TestInitErrors(t *testing.T) {
	state := filepath.Join(t.TempDir(), "s")
	if _, err := store.Open(state, store.Options{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Open(missing) = %v; want a 'does not exist' error", err)
	}
	s, err := store.Init(state, store.InitOptions{Mode: store.ModeDisk}, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = store.Init(state, store.InitOptions{Mode: store.ModeBlob}, store.Options{})
	if err == nil || !strings.Contains(err.Error(), "disk store") {
		t.Errorf("Init over a disk store = %v; want an error naming the existing disk store", err)
	}
	if _, err := store.Init(t.TempDir(), store.InitOptions{Mode: "tape"}, store.Options{}); err == nil {
		t.Errorf("Init with mode tape succeeded")
	}
	if _, err := store.Init(t.TempDir(), store.InitOptions{StoreDir: "relative/store"}, store.Options{}); err == nil {
		t.Errorf("Init with a relative store dir succeeded")
	}
	s, err = store.Open(state, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.PathOf(context.Background(), filepath.Join(state, "nope"), store.AddOptions{}); err == nil {
		t.Errorf("PathOf(missing source) succeeded")
	}
}
