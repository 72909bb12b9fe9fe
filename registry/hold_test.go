package registry_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/storefs/storefs/registry/registrytest"
)

// Release while other goroutines use the held database must not make their
// transactions fail: they either run on the held file before it is closed
// or open the file themselves.
func TestReleaseDuringTransactions(t *testing.T) {
	r := registrytest.New(t, "disk")
	registrytest.MustRegister(t, r, registrytest.Reg(registrytest.Info(nA)))
	var stop atomic.Bool
	var wg sync.WaitGroup
	var failures atomic.Int64
	var firstErr atomic.Value
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				if _, err := r.Get(nA); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for range 200 {
		if err := r.Hold(); err != nil {
			t.Fatalf("Hold() = %v", err)
		}
		if err := r.Release(); err != nil {
			t.Fatalf("Release() = %v", err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Errorf("Get(%q) failed %d times while Hold/Release alternated; first: %v", nA, n, firstErr.Load())
	}
}

// Check on a held registry (a daemon's `storefs verify`) while another
// goroutine registers must report no problems and must not race.
func TestCheckWhileRegisteringHeld(t *testing.T) {
	r := registrytest.New(t, "disk")
	if err := r.Hold(); err != nil {
		t.Fatalf("Hold() = %v", err)
	}
	t.Cleanup(func() { r.Release() })
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 300 {
			name := registrytest.Name(string(rune('a'+i%26)) + string(rune('a'+i/26)))
			if _, err := r.Register(registrytest.Reg(registrytest.Info(name))); err != nil {
				t.Errorf("Register = %v", err)
			}
		}
	})
	for range 50 {
		probs, err := r.Check()
		if err != nil || len(probs) != 0 {
			t.Errorf("Check() during registrations = %v, %v; want none", probs, err)
			break
		}
	}
	wg.Wait()
}
