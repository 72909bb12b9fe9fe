package nar

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/fixture.sha256 (needs nix-store) and testdata/fuzz/FuzzReader")

// fuzzSeeds are the valid and malformed cases plus the multi-entry archive.
func fuzzSeeds() map[string][]byte {
	seeds := map[string][]byte{"multi": multiNAR()}
	for _, c := range narCases() {
		seeds[c.name] = c.data
	}
	return seeds
}

// FuzzReader checks the reader never panics and that, since only canonical
// archives are accepted, whatever Copy accepts it reproduces exactly.
func FuzzReader(f *testing.F) {
	for _, data := range fuzzSeeds() {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		n, err := Copy(&out, bytes.NewReader(data))
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Copy() = %v (%T); want *Error", err, err)
			}
			if e.Offset < 0 || e.Offset > int64(len(data)) {
				t.Fatalf("Copy() = %v; offset outside the input (%d bytes)", err, len(data))
			}
		} else {
			if !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("Copy() accepted a non-canonical archive:\n in %x\nout %x", data, out.Bytes())
			}
			if n != int64(len(data)) {
				t.Fatalf("Copy() = %d; want %d", n, len(data))
			}
		}
		// The pull API with partial reads must agree with Copy.
		r := NewReader(bytes.NewReader(data))
		buf := make([]byte, 3)
		var rerr error
		for {
			h, err := r.Next()
			if err != nil {
				rerr = err
				break
			}
			if h.Type == TypeRegular && h.Size%2 == 0 {
				_, err := io.CopyBuffer(io.Discard, r, buf)
				if err != nil {
					rerr = err
					break
				}
			}
		}
		if (rerr == io.EOF) != (err == nil) {
			t.Fatalf("Next() loop ended with %v but Copy() = %v", rerr, err)
		}
	})
}

// TestFuzzSeedCorpus keeps testdata/fuzz/FuzzReader in sync with
// fuzzSeeds; regenerate with go test ./nar/ -run TestFuzzSeedCorpus -update.
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReader")
	for name, data := range fuzzSeeds() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
		p := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("%s is missing or stale (err %v); run go test ./nar/ -run TestFuzzSeedCorpus -update", p, err)
		}
	}
}
