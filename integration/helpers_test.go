package integration

import (
	"bytes"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Helpers shared by several of the integration test files.

// syncBuffer is a bytes.Buffer safe for a process writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// isClosed reports whether done (a channel closed once a process has been
// waited for) is closed, without blocking.
func isClosed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// checkValidItems fails the test unless exactly want are valid in the store
// in state (storefs ls, ignoring order), `storefs verify --contents` passes,
// tmp/ is empty and, in disk mode, store/ holds exactly the valid items.
func checkValidItems(t testing.TB, state, mode string, want []string) {
	t.Helper()
	if ls := listStore(t, state); !sameSet(ls, want) {
		t.Errorf("storefs ls = %v, want %v", ls, want)
	}
	checkVerify(t, state)
	checkTmpEmpty(t, state)
	if mode == "disk" {
		var bases []string
		for _, p := range want {
			bases = append(bases, filepath.Base(p))
		}
		if got := diskStoreEntries(t, state); !sameSet(got, bases) {
			t.Errorf("store/ holds %v, want the valid items %v", got, bases)
		}
	}
}
