// Package registrytest holds helpers for tests of the registry package and of
// its users: a registry in a temporary directory whose invariants are checked
// when the test ends, and makers of plausible store path names and PathInfos.
package registrytest

import (
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/storefs/storefs/registry"
)

// StoreDir is the store dir of every registry New creates.
const StoreDir = "/gnu/store"

// New creates a registry (mode "blob" or "disk") in t.TempDir() with store
// dir /gnu/store. When the test ends it runs r.Check and fails the test on
// any problem: the invariants check used after every registry test.
func New(t testing.TB, mode string) *registry.Registry {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	r, err := registry.Create(path, StoreDir, mode, registry.Options{})
	if err != nil {
		t.Fatalf("registry.Create(%q, %q, %q) = %v", path, StoreDir, mode, err)
	}
	t.Cleanup(func() { CheckClean(t, r) })
	return r
}

// CheckClean runs r.Check and fails the test on an error or any problem.
func CheckClean(t testing.TB, r *registry.Registry) {
	t.Helper()
	probs, err := r.Check()
	if err != nil {
		t.Errorf("Check() of %s: %v", r.Path(), err)
		return
	}
	for _, p := range probs {
		t.Errorf("Check() of %s: problem %s", r.Path(), p)
	}
}

// nix32 alphabet: Nix's base32 omits e, o, u and t.
const nix32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// HashPart returns a deterministic 32-character Nix base32 hash part for
// seed (the first 160 bits of its sha256, as Nix truncates store hashes).
func HashPart(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	h := sum[:20]
	const n = 32 // 160 bits / 5
	out := make([]byte, n)
	for i := n - 1; i >= 0; i-- {
		b := uint(i * 5)
		c := uint(h[b/8]) >> (b % 8)
		if int(b/8)+1 < len(h) {
			c |= uint(h[b/8+1]) << (8 - b%8)
		}
		out[n-1-i] = nix32Alphabet[c&0x1f]
	}
	return string(out)
}

// Name returns a plausible store path base name "<hash32>-<name>" whose hash
// part is derived from name, so equal names give equal paths.
func Name(name string) string { return HashPart(name) + "-" + name }

// Info returns a PathInfo for base name path with the given references and
// deterministic other fields. Its Root is zero (disk mode); use BlobInfo in
// blob mode.
func Info(path string, refs ...string) *registry.PathInfo {
	sum := sha256.Sum256([]byte("nar:" + path))
	return &registry.PathInfo{
		Path:             path,
		NarHash:          sum,
		NarSize:          int64(len(path)) * 1000,
		References:       refs,
		RegistrationTime: time.Unix(1700000000, 0).UTC(),
	}
}

// BlobInfo is Info with a regular file as its root, which needs no directory
// record: a valid blob-mode registration.
func BlobInfo(path string, refs ...string) *registry.PathInfo {
	pi := Info(path, refs...)
	pi.Root = registry.Node{Type: registry.TypeRegular, Size: 42, Key: sha256.Sum256([]byte("blob:" + path))}
	return pi
}

// Reg wraps infos into a registration batch without directory records.
func Reg(infos ...*registry.PathInfo) []registry.Registration {
	batch := make([]registry.Registration, len(infos))
	for i, pi := range infos {
		batch[i] = registry.Registration{Info: pi}
	}
	return batch
}

// MustRegister registers the batch and fails the test on an error. It
// returns the paths newly registered.
func MustRegister(t testing.TB, r *registry.Registry, batch []registry.Registration) []string {
	t.Helper()
	added, err := r.Register(batch)
	if err != nil {
		t.Fatalf("Register(%s) = %v; want no error", batchNames(batch), err)
	}
	return added
}

func batchNames(batch []registry.Registration) []string {
	out := make([]string, len(batch))
	for i, reg := range batch {
		out[i] = reg.Info.Path
	}
	return out
}
