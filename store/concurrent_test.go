package store_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/storefs/storefs/store"
)

// Several Store handles (as several processes would have) add overlapping
// trees at once: the same tree twice, and trees sharing files.
func TestConcurrentAdds(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newStore(t, mode, "/gnu/store")
			srcs := t.TempDir()
			var trees []string
			for i := range 4 {
				d := filepath.Join(srcs, fmt.Sprintf("t%d", i))
				os.Mkdir(d, 0o755)
				randomTree(t, d, uint64(i%2), 60) // t0==t2 and t1==t3 in content
				trees = append(trees, d)
			}
			var wg sync.WaitGroup
			paths := make([][]string, 6)
			for w := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					h, err := store.Open(s.StateDir(), store.Options{})
					if err != nil {
						t.Error(err)
						return
					}
					defer h.Close()
					for i := range trees {
						src := trees[(i+w)%len(trees)]
						p, err := h.Add(context.Background(), src, store.AddOptions{Name: "tree"})
						if err != nil {
							t.Errorf("worker %d: Add(%s): %v", w, src, err)
							return
						}
						paths[w] = append(paths[w], p)
					}
				}()
			}
			wg.Wait()
			distinct := map[string]bool{}
			for _, ps := range paths {
				for _, p := range ps {
					distinct[p] = true
				}
			}
			if len(distinct) != 2 {
				t.Errorf("distinct paths = %d; want 2 (two distinct contents under one name)", len(distinct))
			}
			var listed []string
			s.List(func(p string) bool { listed = append(listed, p); return true })
			if len(listed) != 2 {
				t.Errorf("ls = %v; want 2 paths", listed)
			}
		})
	}
}
