package fs_test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/storefs/storefs/registry"
)

// BenchmarkRootListing100k lists a mounted store root holding 100,000
// items (registered straight into the registry: symlink items, so no blob
// is needed). The listing streams from registry pages.
//
//	go test -run '^$' -bench RootListing ./fs/
func BenchmarkRootListing100k(b *testing.B) {
	s := newStore(b)
	const n = 100_000
	var batch []registry.Registration
	for i := range n {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		name := nixbase32.EncodeToString(h[:20]) + "-item"
		batch = append(batch, registry.Registration{Info: &registry.PathInfo{
			Path: name, NarSize: 1, RegistrationTime: time.Unix(1, 0),
			Root: registry.Node{Type: registry.TypeSymlink, Target: "x"},
		}})
		if len(batch) == 5000 {
			if _, err := s.Registry().Register(batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	m := mountStore(b, s).dir
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Open(m)
		if err != nil {
			b.Fatal(err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil || len(names) != n {
			b.Fatalf("listed %d names, %v; want %d", len(names), err, n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/entry")
}
