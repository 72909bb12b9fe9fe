package fs

import (
	"sync"

	"github.com/storefs/storefs/registry"
)

// dirCache holds decoded directory records by digest (immutable, so never
// stale), bounded: when full, an arbitrary half is dropped.
type dirCache struct {
	mu  sync.Mutex
	max int
	m   map[registry.Digest]*registry.Directory
}

func newDirCache(max int) *dirCache {
	return &dirCache{max: max, m: map[registry.Digest]*registry.Directory{}}
}

func (c *dirCache) get(reg *registry.Registry, d registry.Digest) (*registry.Directory, error) {
	c.mu.Lock()
	dir := c.m[d]
	c.mu.Unlock()
	if dir != nil {
		return dir, nil
	}
	dir, err := reg.Directory(d)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		n := 0
		for k := range c.m {
			delete(c.m, k)
			if n++; n >= c.max/2 {
				break
			}
		}
	}
	c.m[d] = dir
	c.mu.Unlock()
	return dir, nil
}
