package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/storefs/storefs/store"
)

// Values from the real Nix 2.8 (nix-store --add / --dump / nix-hash) on the
// fixture tree, committed so they are checked without Nix.
const (
	fixtureNARSHA256 = "1592781e0e3290a3b791bc4bf337d60f3cd273246f69c858b1aea10d097e693d"
	fixtureNARSize   = 4416
	fixtureNixHash   = "sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm"
)

func TestGoldenPaths(t *testing.T) {
	src := fixture(t, filepath.Join(t.TempDir(), "fx"))
	cases := []struct {
		storeDir, rel, want string
	}{
		{"/gnu/store", "", "/gnu/store/3r2qf4l21625zzkrgzq6m276s3c1vgxq-fx"},
		{"/nix/store", "", "/nix/store/rhmdxs1hxcsw85paq931x8000zhdr0f7-fx"},
		{"/gnu/store", "regular.txt", "/gnu/store/9yv8m1g3kdlgim5jm5cdfh25iaszikmg-regular.txt"},
		{"/nix/store", "regular.txt", "/nix/store/p9jnn01wpfm72z9h1iqlhvy49zgc1z76-regular.txt"},
		{"/gnu/store", "link-rel", "/gnu/store/yi7hj2vj4flnwgcawrdix2zxvlvs2xgv-link-rel"},
		{"/nix/store", "link-rel", "/nix/store/p6cj2spxi93d98yxicrshffdfncg3v0a-link-rel"},
		{"/gnu/store", "empty-dir", "/gnu/store/9am1p3303ykdsq5bf5myqx68j272xx9p-empty-dir"},
		{"/nix/store", "empty-dir", "/nix/store/gygiwca87yqrsr9rgm137lwlyjnz1mg1-empty-dir"},
	}
	for _, mode := range modes {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s%s/%s", mode, c.storeDir, c.rel), func(t *testing.T) {
				s := newStore(t, mode, c.storeDir)
				p := filepath.Join(src, c.rel)
				if got, err := s.PathOf(context.Background(), p, store.AddOptions{}); err != nil || got != c.want {
					t.Errorf("PathOf(%s) = %q, %v; want %q", c.rel, got, err, c.want)
				}
				if got := add(t, s, p, store.AddOptions{}); got != c.want {
					t.Errorf("Add(%s) = %q; want %q", c.rel, got, c.want)
				}
				if !bytes.Equal(export(t, s, c.want), dump(t, p)) {
					t.Errorf("Export(%s) differs from the NAR of the source", c.want)
				}
			})
		}
	}
	t.Run("fixture-nar", func(t *testing.T) {
		s := newStore(t, store.ModeBlob, "/gnu/store")
		p := add(t, s, src, store.AddOptions{})
		n := export(t, s, p)
		if got := sha256hex(n); got != fixtureNARSHA256 || len(n) != fixtureNARSize {
			t.Errorf("export: sha256 %s, %d bytes; want %s, %d", got, len(n), fixtureNARSHA256, fixtureNARSize)
		}
		in, err := s.Info(p)
		if err != nil || in.NarHash != fixtureNixHash || in.NarSize != fixtureNARSize {
			t.Errorf("Info = %+v, %v; want narHash %s", in, err, fixtureNixHash)
		}
	})
}

// randomTree makes a tree with every kind of node the NAR can hold.
func randomTree(t *testing.T, dir string, seed uint64, files int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	names := []string{"a", "B", "ü", "with space", "x.txt", "_u", "Z", "日本", "long-" + strings.Repeat("n", 100)}
	dirs := []string{dir}
	for i := 0; i < files; i++ {
		parent := dirs[r.IntN(len(dirs))]
		name := fmt.Sprintf("%s-%d", names[r.IntN(len(names))], i)
		p := filepath.Join(parent, name)
		var err error
		switch k := r.IntN(10); {
		case k < 2:
			err = os.Mkdir(p, 0o755)
			dirs = append(dirs, p)
		case k < 3:
			err = os.Symlink([]string{"../x", "/abs/dangling", name, "."}[r.IntN(4)], p)
		default:
			size := []int{0, 1, 7, 8, 9, 4095, 4096, 70000, 1<<20 + 3}[r.IntN(9)]
			if r.IntN(20) == 0 {
				size = 3<<20 + 5
			}
			data := make([]byte, size)
			for j := range data {
				data[j] = byte(r.IntN(4)) // compressible, and duplicates happen
			}
			mode := os.FileMode(0o644)
			if r.IntN(3) == 0 {
				mode = 0o755
			}
			err = os.WriteFile(p, data, mode)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestAddExportRoundTrip(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/gnu/store")
			src := filepath.Join(t.TempDir(), "tree")
			os.Mkdir(src, 0o755)
			randomTree(t, src, 42, 300)
			p := add(t, s, src, store.AddOptions{})
			want := dump(t, src)
			if got := export(t, s, p); !bytes.Equal(got, want) {
				t.Fatalf("export differs from the source NAR (%d vs %d bytes)", len(got), len(want))
			}
			// Adding again is a no-op with the same path.
			if again := add(t, s, src, store.AddOptions{}); again != p {
				t.Errorf("second Add = %s; want %s", again, p)
			}
			// export | import into a second store gives the same path, in both modes.
			for _, mode2 := range modes {
				s2 := newStore(t, mode2, "/gnu/store")
				got, err := s2.Import(context.Background(), bytes.NewReader(want), store.ImportOptions{Name: "tree"})
				if err != nil || got != p {
					t.Errorf("import into %s store = %s, %v; want %s", mode2, got, err, p)
				}
				if !bytes.Equal(export(t, s2, got), want) {
					t.Errorf("re-export from %s store differs", mode2)
				}
			}
		})
	}
}

func TestDiskModeCanonical(t *testing.T) {
	s := newStore(t, store.ModeDisk, "/gnu/store")
	src := fixture(t, filepath.Join(t.TempDir(), "fx"))
	os.Chmod(filepath.Join(src, "run.sh"), 0o4775) // setuid and group write must go
	p := add(t, s, src, store.AddOptions{})
	real := filepath.Join(s.RealStoreDir(), filepath.Base(p))
	filepath.Walk(real, func(q string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Mtim.Sec != 1 {
			t.Errorf("%s: mtime %d; want 1", q, st.Mtim.Sec)
		}
		m := fi.Mode()
		switch {
		case m.IsDir() && m.Perm() != 0o555:
			t.Errorf("%s: dir mode %v; want 0555", q, m)
		case m.IsRegular() && m.Perm() != 0o444 && m.Perm() != 0o555:
			t.Errorf("%s: file mode %v; want 0444 or 0555", q, m)
		case m&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0:
			t.Errorf("%s: mode %v has setuid/setgid/sticky", q, m)
		}
		return nil
	})
	if fi, _ := os.Stat(filepath.Join(real, "run.sh")); fi.Mode().Perm() != 0o555 {
		t.Errorf("run.sh mode %v; want 0555", fi.Mode())
	}
}

func TestBlobModeDedup(t *testing.T) {
	s := newStore(t, store.ModeBlob, "/gnu/store")
	dir := t.TempDir()
	data := bytes.Repeat([]byte("Hello, world!"), 1000)
	for _, n := range []string{"one", "two"} {
		os.MkdirAll(filepath.Join(dir, n, "sub"), 0o755)
		os.WriteFile(filepath.Join(dir, n, "sub", "f"), data, 0o644)
		os.WriteFile(filepath.Join(dir, n, "g"), data, 0o644)
		os.WriteFile(filepath.Join(dir, n, "x"), data, 0o755) // other exec bit: another blob
		os.WriteFile(filepath.Join(dir, n, n), []byte(n), 0o644)
		add(t, s, filepath.Join(dir, n), store.AddOptions{})
	}
	var blobs []string
	filepath.Walk(filepath.Join(s.StateDir(), "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			blobs = append(blobs, filepath.Base(p))
		}
		return nil
	})
	slices.Sort(blobs)
	// non-exec data, exec data, "one", "two"
	if len(blobs) != 4 {
		t.Errorf("blobs = %v; want 4 distinct", blobs)
	}
	// The Guix test vector: the .links name of "Hello, world!"x1000.
	if !slices.Contains(blobs, "17cwh1g1qkzvifyx91jcyk2gvw1zr2pd4n5wgzdzccc37kmz5mxl") ||
		!slices.Contains(blobs, "0b4fa4qchfla7s9cyfrlifxkf680cr9j34dbxpdf1f9g1a86g7gv") {
		t.Errorf("blobs = %v; want the nix32 .links names of the data", blobs)
	}
}

func TestReferences(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/nix/store")
			dir := t.TempDir()
			mk := func(n string) string {
				p := filepath.Join(dir, n)
				os.WriteFile(p, []byte(n), 0o644)
				return p
			}
			a := add(t, s, mk("a"), store.AddOptions{})
			b := add(t, s, mk("b"), store.AddOptions{Refs: []string{a}})
			c := add(t, s, mk("c"), store.AddOptions{Refs: []string{b, a}})
			plainB, _ := s.PathOf(context.Background(), filepath.Join(dir, "b"), store.AddOptions{})
			if plainB == b {
				t.Errorf("a reference must change the path")
			}
			in, err := s.Info(c)
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{a, b}; !slices.Equal(sorted(in.References), sorted(want)) {
				t.Errorf("references of c = %v; want %v", in.References, want)
			}
			ia, _ := s.Info(a)
			if want := []string{b, c}; !slices.Equal(sorted(ia.Referrers), sorted(want)) {
				t.Errorf("referrers of a = %v; want %v", ia.Referrers, want)
			}
			cl, err := s.Closure([]string{c})
			if err != nil || !slices.Equal(cl, []string{a, b, c}) {
				t.Errorf("Closure(c) = %v, %v; want [a b c]", cl, err)
			}
			// A reference must be valid.
			_, err = s.Add(context.Background(), mk("d"), store.AddOptions{Refs: []string{"/nix/store/00000000000000000000000000000000-nope"}})
			if !errors.Is(err, store.ErrNotValid) {
				t.Errorf("Add with an invalid reference: %v; want ErrNotValid", err)
			}
			// Bundle round trip keeps references, in a fresh store.
			var bundle bytes.Buffer
			if err := s.ExportBundle(context.Background(), &bundle, []string{c, a, b}); err != nil {
				t.Fatal(err)
			}
			s2 := newStore(t, mode, "/nix/store")
			got, err := s2.ImportBundle(context.Background(), bytes.NewReader(bundle.Bytes()), nil)
			if err != nil || !slices.Equal(got, []string{a, b, c}) {
				t.Fatalf("ImportBundle = %v, %v; want [a b c] in dependency order", got, err)
			}
			in2, _ := s2.Info(c)
			if !slices.Equal(in2.References, in.References) || in2.NarHash != in.NarHash {
				t.Errorf("imported info %+v; want %+v", in2, in)
			}
		})
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func TestBadInputLeavesStoreUnchanged(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/gnu/store")
			dir := t.TempDir()
			src := filepath.Join(dir, "src")
			os.Mkdir(src, 0o755)
			os.WriteFile(filepath.Join(src, "big"), bytes.Repeat([]byte("z"), 2<<20), 0o644)
			if err := syscall.Mkfifo(filepath.Join(src, "zz-fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, s.StateDir())
			_, err := s.Add(context.Background(), src, store.AddOptions{})
			if !errors.Is(err, store.ErrUnsupported) || !strings.Contains(err.Error(), "zz-fifo") {
				t.Errorf("Add with a FIFO: %v; want ErrUnsupported naming the file", err)
			}
			for _, name := range []string{"a/b", "..", ".hidden", "with space", strings.Repeat("x", 212)} {
				if _, err := s.Add(context.Background(), filepath.Join(src, "big"), store.AddOptions{Name: name}); err == nil {
					t.Errorf("Add with name %q succeeded", name)
				}
			}
			// A NAR that fails late (after a large file was staged).
			var good bytes.Buffer
			os.Remove(filepath.Join(src, "zz-fifo"))
			good.Write(dump(t, src))
			bad := append(slices.Clone(good.Bytes()), []byte("trailing")...)
			if _, err := s.Import(context.Background(), bytes.NewReader(bad), store.ImportOptions{Name: "x"}); err == nil || !strings.Contains(err.Error(), "offset") {
				t.Errorf("Import with trailing bytes: %v; want an error naming the offset", err)
			}
			if after := snapshot(t, s.StateDir()); !slices.Equal(before, after) {
				t.Errorf("state dir changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// snapshot lists the state dir's files, except the registry and this
// process's staging lock.
func snapshot(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		// The registry changes in place; the lock files may appear.
		if rel == "registry.db" || rel == "tmp.lock" || rel == "gc.lock" {
			return nil
		}
		out = append(out, rel)
		return nil
	})
	return out
}
