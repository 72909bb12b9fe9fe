package cache

import (
	"crypto/rand"
	"fmt"
	"os"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// GenerateKey makes an ed25519 key pair named name and returns both in
// Nix's text form (secret "name:base64(64 bytes)", public
// "name:base64(32 bytes)"), as `nix-store --generate-binary-cache-key`.
func GenerateKey(name string) (secret, public string, err error) {
	if name == "" || strings.ContainsAny(name, ": \t\n") {
		return "", "", fmt.Errorf("bad key name %q: want a non-empty name without ':' or spaces", name)
	}
	sk, pk, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		return "", "", err
	}
	return sk.String(), pk.String(), nil
}

// LoadSecretKey parses a secret key in Nix's text form (surrounding white
// space is ignored, as in a file).
func LoadSecretKey(text string) (signature.SecretKey, error) {
	sk, err := signature.LoadSecretKey(strings.TrimSpace(text))
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("bad secret key: %w", err)
	}
	return sk, nil
}

// ReadSecretKey reads a secret key file.
func ReadSecretKey(file string) (signature.SecretKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return signature.SecretKey{}, err
	}
	sk, err := LoadSecretKey(string(b))
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("%s: %w", file, err)
	}
	return sk, nil
}

// ParsePublicKey parses a public key in Nix's text form.
func ParsePublicKey(text string) (signature.PublicKey, error) {
	pk, err := signature.ParsePublicKey(strings.TrimSpace(text))
	if err != nil {
		return signature.PublicKey{}, fmt.Errorf("bad public key %q: %w", strings.TrimSpace(text), err)
	}
	return pk, nil
}
