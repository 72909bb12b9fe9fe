package store

import (
	"errors"
	"fmt"
	"time"

	"github.com/storefs/storefs/registry"
)

// Info is what `storefs info` shows about a valid path. Paths are full store
// paths.
type Info struct {
	Path             string    `json:"path"`
	NarHash          string    `json:"narHash"`
	NarSize          int64     `json:"narSize"`
	References       []string  `json:"references"`
	Referrers        []string  `json:"referrers"`
	Deriver          string    `json:"deriver,omitempty"`
	RegistrationTime time.Time `json:"registrationTime"`
	CA               string    `json:"ca,omitempty"`
}

// Info returns what the registry knows about a valid path.
func (s *Store) Info(p string) (*Info, error) {
	pi, rel, err := s.info(p)
	if err != nil {
		return nil, err
	}
	if rel != "" {
		return nil, fmt.Errorf("%s: not a store path (has a path below the item)", p)
	}
	referrers, err := s.reg.Referrers(pi.Path)
	if err != nil {
		return nil, err
	}
	in := &Info{
		Path:             s.FullPath(pi.Path),
		NarHash:          NixHash(pi.NarHash),
		NarSize:          pi.NarSize,
		References:       s.fullPaths(pi.References),
		Referrers:        s.fullPaths(referrers),
		RegistrationTime: pi.RegistrationTime,
		CA:               pi.CA,
	}
	if pi.Deriver != "" {
		in.Deriver = s.FullPath(pi.Deriver)
	}
	return in, nil
}

// List calls fn with every valid store path, sorted, until fn returns false.
func (s *Store) List(fn func(path string) bool) error {
	// Collect in pages so that fn (which may write to a slow pipe) never runs
	// inside a registry transaction.
	after := ""
	for {
		page := make([]string, 0, 4096)
		err := s.reg.List(after, func(name string) bool {
			page = append(page, name)
			return len(page) < cap(page)
		})
		if err != nil {
			return err
		}
		for _, n := range page {
			if !fn(s.FullPath(n)) {
				return nil
			}
		}
		if len(page) < cap(page) {
			return nil
		}
		after = page[len(page)-1]
	}
}

// Closure returns the requisites of the paths (themselves included),
// dependencies first.
func (s *Store) Closure(paths []string) ([]string, error) {
	var bases []string
	for _, p := range paths {
		pi, rel, err := s.info(p)
		if err != nil {
			return nil, err
		}
		if rel != "" {
			return nil, fmt.Errorf("%s: not a store path", p)
		}
		bases = append(bases, pi.Path)
	}
	c, err := s.reg.Closure(bases)
	if err != nil {
		return nil, err
	}
	return s.fullPaths(c), nil
}

// IsValid reports whether p (a full store path) is valid.
func (s *Store) IsValid(p string) (bool, error) {
	base, rel, err := SplitStorePath(s.storeDir, p)
	if err != nil || rel != "" {
		return false, err
	}
	return s.reg.IsValid(base)
}

// LookupHashPart returns the valid path whose hash part (the 32 nix-base32
// characters after the store dir) is hash32, or an error wrapping
// ErrNotValid: what a binary cache answers `<hash32>.narinfo` with.
func (s *Store) LookupHashPart(hash32 string) (string, error) {
	if len(hash32) != HashPartLen {
		return "", fmt.Errorf("%q: not a store path hash part: %w", hash32, ErrNotValid)
	}
	base, err := s.reg.LookupHashPart(hash32)
	if err != nil {
		if errors.Is(err, registry.ErrNotValid) {
			return "", fmt.Errorf("%s/%s: %w", s.storeDir, hash32, ErrNotValid)
		}
		return "", err
	}
	return s.FullPath(base), nil
}
