package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/storepath"
)

// MaxNameLen is Nix's limit on the name part of a store path.
const MaxNameLen = 211

// HashPartLen is the length of the hash part of a store path.
const HashPartLen = 32

// CheckName applies the Nix and Guix rules to the name part of a store
// path: 1 to 211 characters from [A-Za-z0-9+-._?=], not starting with '.'
// (Guix's rule, stricter than Nix 2.8, which accepts ".", ".." and ".x").
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("invalid store path name %q: empty", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("invalid store path name %q: longer than %d characters", name, MaxNameLen)
	case name[0] == '.':
		return fmt.Errorf("invalid store path name %q: must not start with '.'", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Errorf("invalid store path name %q: illegal character %q", name, c)
		}
	}
	return nil
}

// CheckStoreDir checks a logical store dir: absolute, clean, not "/".
func CheckStoreDir(dir string) error {
	if !path.IsAbs(dir) || path.Clean(dir) != dir || dir == "/" {
		return fmt.Errorf("invalid store dir %q: must be an absolute, clean path other than /", dir)
	}
	return nil
}

// MakeSourcePath is the store path of a recursive-sha256 ("source") item:
// what `nix-store --add` and Guix's add-to-store give (with no references),
// and Nix's source path with references otherwise. refs are full store paths.
func MakeSourcePath(storeDir string, narHash [32]byte, name string, refs []string) string {
	typ := "source"
	sorted := slices.Clone(refs)
	slices.Sort(sorted)
	for _, r := range slices.Compact(sorted) {
		typ += ":" + r
	}
	return makeStorePath(storeDir, typ, narHash, name)
}

func makeStorePath(storeDir, typ string, inner [32]byte, name string) string {
	fp := typ + ":sha256:" + hex.EncodeToString(inner[:]) + ":" + storeDir + ":" + name
	h := sha256.Sum256([]byte(fp))
	var folded [20]byte
	for i, b := range h {
		folded[i%20] ^= b
	}
	return storeDir + "/" + nixbase32.EncodeToString(folded[:]) + "-" + name
}

// ParseBaseName checks a store path's base name "<hash32>-<name>".
func ParseBaseName(base string) (hashPart, name string, err error) {
	if _, err := storepath.FromString(base); err != nil {
		return "", "", fmt.Errorf("invalid store path %q: want <32 nix-base32 characters>-<name>", base)
	}
	hashPart, name = base[:HashPartLen], base[HashPartLen+1:]
	if err := CheckName(name); err != nil {
		return "", "", err
	}
	return hashPart, name, nil
}

// SplitStorePath splits "<storeDir>/<base>[/rel/path]" into the base name and
// the relative path below the item ("" for the item itself). p may also be a
// bare base name.
func SplitStorePath(storeDir, p string) (base, rel string, err error) {
	rest := p
	if strings.HasPrefix(p, "/") {
		var ok bool
		rest, ok = strings.CutPrefix(p, storeDir+"/")
		if !ok {
			return "", "", fmt.Errorf("%q is not in the store dir %s", p, storeDir)
		}
	}
	base, rel, _ = strings.Cut(rest, "/")
	if _, _, err := ParseBaseName(base); err != nil {
		return "", "", fmt.Errorf("%q: %w", p, err)
	}
	rel = strings.Trim(path.Clean("/"+rel), "/")
	return base, rel, nil
}

// NixHash formats a SHA-256 as Nix prints NAR hashes: "sha256:<nix32>".
func NixHash(sum [32]byte) string { return "sha256:" + nixbase32.EncodeToString(sum[:]) }
