package compare

import (
	"errors"
	"fmt"
	"strings"

	"github.com/storefs/storefs/store"
)

// Strategy is one way of storing the sources (see the package doc).
type Strategy string

// The strategies, in the order All gives them.
const (
	None      Strategy = "none"
	Links8192 Strategy = "links-8192"
	Links0    Strategy = "links-0"
	Blob      Strategy = "blob"
	Chunk     Strategy = "chunk"
)

// All is every strategy, the baseline first.
func All() []Strategy { return []Strategy{None, Links8192, Links0, Blob, Chunk} }

// ErrUnknownStrategy is returned by ParseStrategies for a name it does not
// know (a command-line mistake).
var ErrUnknownStrategy = errors.New("unknown strategy")

// ParseStrategies parses a comma-separated list of strategy names; the empty
// list is All. Names may not repeat.
func ParseStrategies(list string) ([]Strategy, error) {
	if strings.TrimSpace(list) == "" {
		return All(), nil
	}
	var out []Strategy
	for _, f := range strings.Split(list, ",") {
		s := Strategy(strings.TrimSpace(f))
		if !s.valid() {
			return nil, fmt.Errorf("%w %q (want some of %s)", ErrUnknownStrategy, s, names(All()))
		}
		for _, o := range out {
			if o == s {
				return nil, fmt.Errorf("strategy %q given twice", s)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func names(ss []Strategy) string {
	n := make([]string, len(ss))
	for i, s := range ss {
		n[i] = string(s)
	}
	return strings.Join(n, ",")
}

func (s Strategy) valid() bool {
	for _, o := range All() {
		if s == o {
			return true
		}
	}
	return false
}

// linksMin is the `.links` threshold of a links strategy, -1 for the others.
func (s Strategy) linksMin() int64 {
	switch s {
	case Links8192:
		return 8192
	case Links0:
		return 0
	}
	return -1
}

// mode is the store mode a strategy builds.
func (s Strategy) mode() store.Mode {
	switch s {
	case Blob:
		return store.ModeBlob
	case Chunk:
		return store.ModeChunk
	}
	return store.ModeDisk
}

// initOptions are the settings of a store built for s.
func (s Strategy) initOptions() store.InitOptions {
	io := store.InitOptions{Mode: s.mode()}
	if m := s.linksMin(); m >= 0 {
		io.LinksMinSize = &m
	}
	return io
}
