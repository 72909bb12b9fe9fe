package registry_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
)

const benchPaths = 1000

func benchInfos() []*registry.PathInfo {
	infos := make([]*registry.PathInfo, benchPaths)
	base := registrytest.Name("bench-base")
	for i := range infos {
		name := registrytest.Name(fmt.Sprintf("bench-%04d", i))
		if i == 0 {
			name = base
		}
		var refs []string
		if i > 0 {
			refs = []string{base}
		}
		infos[i] = registrytest.Info(name, refs...)
	}
	return infos
}

// BenchmarkRegister registers 1000 paths into a new registry per iteration:
// one Register call (one file open, one commit) per path, or one batch.
func BenchmarkRegister(b *testing.B) {
	infos := benchInfos()
	run := func(b *testing.B, hold bool, register func(r *registry.Registry)) {
		b.ReportAllocs()
		var elapsed time.Duration
		for b.Loop() {
			b.StopTimer()
			r := registrytest.New(b, "disk")
			if hold {
				if err := r.Hold(); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			start := time.Now()
			register(r)
			elapsed += time.Since(start)
			b.StopTimer()
			if hold {
				r.Release()
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*benchPaths), "ns/path")
	}
	one := func(r *registry.Registry) {
		for _, pi := range infos {
			if _, err := r.Register(registrytest.Reg(pi)); err != nil {
				b.Fatal(err)
			}
		}
	}
	batch := func(r *registry.Registry) {
		if _, err := r.Register(registrytest.Reg(infos...)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("1000x1", func(b *testing.B) { run(b, false, one) })
	b.Run("1000x1-held", func(b *testing.B) { run(b, true, one) })
	b.Run("1x1000", func(b *testing.B) { run(b, false, batch) })
}

// BenchmarkGet reads one path from a registry of 1000: with the file opened
// for the transaction (the default) and with the file held open.
func BenchmarkGet(b *testing.B) {
	infos := benchInfos()
	for _, hold := range []bool{false, true} {
		name := "open-per-tx"
		if hold {
			name = "held"
		}
		b.Run(name, func(b *testing.B) {
			r := registrytest.New(b, "disk")
			registrytest.MustRegister(b, r, registrytest.Reg(infos...))
			if hold {
				if err := r.Hold(); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { r.Release() })
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := r.Get(infos[i%len(infos)].Path); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
