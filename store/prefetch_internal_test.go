package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// The add opens sources ahead of its workers (prefetch): every descriptor is
// closed, after an add that succeeds and after one that fails while many
// files ahead of the failure are open, in every mode.
func TestIngestClosesPrefetched(t *testing.T) {
	src := t.TempDir()
	for i := range 3 * window {
		p := filepath.Join(src, fmt.Sprintf("d%d", i%7), fmt.Sprintf("f%04d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, fmt.Appendf(nil, "file %d\n", i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for _, mode := range []Mode{ModeBlob, ModeChunk, ModeDisk} {
		t.Run(string(mode), func(t *testing.T) {
			s, err := Init(filepath.Join(t.TempDir(), "state"), InitOptions{Mode: mode}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// The first add opens the store's temp-roots file, kept open.
			warm := filepath.Join(t.TempDir(), "warm")
			if err := os.WriteFile(warm, []byte("warm"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Add(ctx, warm, AddOptions{}); err != nil {
				t.Fatal(err)
			}
			before := openFDs(t)
			if _, err := s.Add(ctx, src, AddOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := openFDs(t); got != before {
				t.Errorf("%d descriptors open after an add, %d before", got, before)
			}

			// A file shrinks after the walk: the add fails on it, with
			// the files after it prefetched.
			root, files, err := walkSource(src)
			if err != nil {
				t.Fatal(err)
			}
			victim := files[3]
			if err := os.WriteFile(victim.src, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			defer os.WriteFile(victim.src, []byte("restored\n"), 0o644)
			it, err := s.newItem(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = it.ingestTree(ctx, root, files, nil)
			it.discard()
			if !errors.Is(err, errChanged) {
				t.Fatalf("ingest with a shrunk file: %v, want errChanged", err)
			}
			if got := openFDs(t); got != before {
				t.Errorf("%d descriptors open after a failed add, %d before", got, before)
			}
		})
	}
}
