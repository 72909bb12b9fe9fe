package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

			// A FIFO in the last directory: refused, nothing left open.
			fifo := filepath.Join(src, "d6", "zz", "pipe")
			if err := os.MkdirAll(filepath.Dir(fifo), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(fifo, 0o644); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
			defer os.RemoveAll(filepath.Dir(fifo))
			if _, err := s.Add(ctx, src, AddOptions{}); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "d6/zz/pipe") {
				t.Errorf("add with a FIFO: %v, want ErrUnsupported naming it", err)
			}
			if got := openFDs(t); got != before {
				t.Errorf("%d descriptors open after an add refused, %d before", got, before)
			}
		})
	}
}

// readExact takes a file of its walked size, and refuses one that grew or
// shrank since the walk (with one read where the file is as walked).
func TestReadExact(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		walked  int64
		now     string
		changed bool
	}{
		{0, "", false},
		{10, "0123456789", false},
		{10, "0123456789A", true},
		{10, "012345678", true},
		{0, "x", true},
		{5000, strings.Repeat("y", 5000), false},
		{5000, strings.Repeat("y", 5001), true},
	} {
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, []byte(tc.now), 0o644); err != nil {
			t.Fatal(err)
		}
		n := &node{src: p, size: tc.walked}
		err := readExact(n)
		switch {
		case tc.changed && !errors.Is(err, errChanged):
			t.Errorf("walked %d, now %d bytes: %v, want errChanged", tc.walked, len(tc.now), err)
		case !tc.changed && (err != nil || string(n.data) != tc.now):
			t.Errorf("walked %d bytes: %q, %v", tc.walked, n.data, err)
		}
		if n.buf != nil {
			putBuf(n.buf)
		}
	}
	if err := readExact(&node{src: filepath.Join(dir, "missing"), size: 1}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing source: %v", err)
	}
}
