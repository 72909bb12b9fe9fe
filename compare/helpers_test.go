package compare

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
)

// pseudoRandom is n bytes from a fixed seed: the same in every run, so
// chunk boundaries are too.
func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint64())
	}
	return b
}

func write(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// tree is the generated test tree, its files' contents by name.
type tree struct {
	dir         string // holds the items
	paths       []string
	small, mid  []byte // 5000 and 20000 bytes
	big, bigIns []byte // 1 MiB, and the same with one byte inserted in the middle
}

// makeTree writes, under dir:
//
//	pkg/small-a, pkg/small-b    5000 bytes, the same (under 8192)
//	pkg/mid-a, pkg/mid-b        20000 bytes, the same (over 8192)
//	pkg/sub/mid-x               the same 20000 bytes, executable (another key)
//	pkg/empty                   empty
//	pkg/link -> small-a         a short symlink (inline in its inode)
//	pkg/big                     1 MiB pseudo-random
//	pkg/big-ins                 big with one byte inserted in the middle
//	copy.bin                    the 20000 bytes again, an item of its own
//
// and returns the two items, pkg and copy.bin.
func makeTree(t *testing.T, dir string) *tree {
	t.Helper()
	tr := &tree{dir: dir, small: pseudoRandom(1, 5000), mid: pseudoRandom(2, 20000), big: pseudoRandom(3, 1<<20)}
	half := len(tr.big) / 2
	tr.bigIns = append(append(append([]byte{}, tr.big[:half]...), 'x'), tr.big[half:]...)
	pkg := filepath.Join(dir, "pkg")
	write(t, filepath.Join(pkg, "small-a"), tr.small, 0o644)
	write(t, filepath.Join(pkg, "small-b"), tr.small, 0o644)
	write(t, filepath.Join(pkg, "mid-a"), tr.mid, 0o644)
	write(t, filepath.Join(pkg, "mid-b"), tr.mid, 0o644)
	write(t, filepath.Join(pkg, "sub", "mid-x"), tr.mid, 0o755)
	write(t, filepath.Join(pkg, "empty"), nil, 0o644)
	write(t, filepath.Join(pkg, "big"), tr.big, 0o644)
	write(t, filepath.Join(pkg, "big-ins"), tr.bigIns, 0o644)
	if err := os.Symlink("small-a", filepath.Join(pkg, "link")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "copy.bin"), tr.mid, 0o644)
	tr.paths = []string{pkg, filepath.Join(dir, "copy.bin")}
	return tr
}

// allocated is st_blocks x 512 of p (not following a symlink).
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// blockRule reports whether the filesystem of the tree allocates files and
// small directories in whole 4096-byte blocks (roundup), as the exact figures
// assume (ext4 does; btrfs keeps small files inline, tmpfs differs for
// directories). The stores are built on the same filesystem.
func blockRule(t *testing.T, tr *tree) bool {
	t.Helper()
	pkg := tr.paths[0]
	for name, size := range map[string]int{"small-a": 5000, "mid-a": 20000, "big": 1 << 20, "big-ins": 1<<20 + 1, "sub": 4096, "link": 0} {
		if got := allocated(t, filepath.Join(pkg, name)); got != roundup(int64(size)) {
			t.Logf("%s: %d bytes allocated, not %d: no exact block figures on this filesystem", name, got, roundup(int64(size)))
			return false
		}
	}
	return true
}

func key(t *testing.T, exec bool, data []byte) cas.Key {
	t.Helper()
	k, err := fileKey(exec, int64(len(data)), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// chunksOf splits data as chunk mode does.
func chunksOf(t *testing.T, data []byte) []chunk.Ref {
	t.Helper()
	var refs []chunk.Ref
	err := chunk.NewSplitter().Split(bytes.NewReader(data), func(b []byte) error {
		refs = append(refs, chunk.Ref{Key: chunk.KeyOf(b), Size: uint32(len(b))})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

// du is GNU du's count of dir: allocated bytes and inodes, hard links once.
func du(t *testing.T, dir string) (bytes, inodes int64) {
	t.Helper()
	if _, err := exec.LookPath("du"); err != nil {
		t.Skip("du not installed")
	}
	field := func(args ...string) int64 {
		out, err := exec.Command("du", append(args, dir)...).Output()
		if err != nil {
			t.Fatalf("du %v %s: %v", args, dir, err)
		}
		n, err := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
		if err != nil {
			t.Fatalf("du %v: %q", args, out)
		}
		return n
	}
	return field("-sB1"), field("-s", "--inodes")
}

// fanoutUsage is what a content area holding names costs on a 4096-byte
// block filesystem: its own directory, one directory per first two
// characters, and the files' bytes.
func fanoutUsage(names []string, bytes int64) Usage {
	prefixes := map[string]bool{}
	for _, n := range names {
		prefixes[n[:2]] = true
	}
	return Usage{Bytes: bytes + 4096*int64(len(prefixes)+1), Inodes: int64(len(names) + len(prefixes) + 1)}
}

func byStrategy(rs []Result) map[Strategy]Result {
	m := map[Strategy]Result{}
	for _, r := range rs {
		m[r.Strategy] = r
	}
	return m
}
