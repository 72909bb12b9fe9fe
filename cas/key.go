package cas

import (
	"fmt"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Key names a blob: sha256 of the single-file NAR of its content.
type Key [32]byte

// KeyLen is the length of a Key in nix-base32.
const KeyLen = 52

// String is the nix-base32 form, as `.links` names are written.
func (k Key) String() string { return nixbase32.EncodeToString(k[:]) }

// Short is a prefix for log lines.
func (k Key) Short() string { return k.String()[:12] }

// ParseKey parses the nix-base32 form of a Key.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != KeyLen {
		return k, fmt.Errorf("blob key %q: want %d nix-base32 characters", s, KeyLen)
	}
	b, err := nixbase32.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("blob key %q: not nix-base32", s)
	}
	copy(k[:], b)
	return k, nil
}
