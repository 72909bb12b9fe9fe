package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bigTree writes parts directories of about 100 MiB each (1000 files in 20
// directories: mostly small files, ten of 8 MiB), every file distinct (a
// 16-byte header naming it, then a slice of one random buffer, so that
// generating 300 MiB costs little even under the race detector).
func bigTree(t *testing.T, dir string, parts int) []string {
	base := newRNG(4242).bytes(16 << 20)
	var out []string
	for part := range parts {
		r := newRNG(uint64(5000 + part))
		root := filepath.Join(dir, fmt.Sprintf("big-%d", part))
		for i := range 1000 {
			d := filepath.Join(root, fmt.Sprintf("dir-%02d", i/50))
			if i%50 == 0 {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			size := 16 + r.intn(45<<10)
			if i%100 == 0 {
				size = 8 << 20
			}
			var hdr [16]byte
			binary.LittleEndian.PutUint64(hdr[:], uint64(part))
			binary.LittleEndian.PutUint64(hdr[8:], uint64(i))
			off := r.intn(len(base) - size)
			mode := os.FileMode(0o644)
			if i%7 == 0 {
				mode = 0o755
			}
			p := filepath.Join(d, fmt.Sprintf("file-%04d", i))
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(hdr[:]); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(base[off : off+size-16]); err != nil {
				t.Fatal(err)
			}
			if err := f.Chmod(mode); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, root)
	}
	return out
}

// TestKillDuringAdd SIGKILLs `storefs add` of a large tree (three items of
// about 100 MiB, 3000 files) at several moments. After each kill: the next
// `storefs ls` works and leaves nothing of the dead process in tmp/, no path
// is valid but the fully added ones (ls lists only expected paths and
// `storefs verify --contents` passes). Then the same add completes and
// verifies. Both modes.
func TestKillDuringAdd(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and adds 300 MiB; skipped with -short")
	}
	srcs := bigTree(t, tempDir(t), 3)
	scratch := initStore(t, "blob", "/gnu/store")
	var want []string
	for _, src := range srcs {
		want = append(want, strings.TrimSpace(string(mustStorefs(t, scratch, "path", src).stdout)))
	}
	delays := []time.Duration{150 * time.Millisecond, 450 * time.Millisecond, 800 * time.Millisecond, 1200 * time.Millisecond}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			killed := 0
			for _, d := range delays {
				if killAddAfter(t, state, srcs, want, d) {
					killed++
				}
			}
			if killed == 0 {
				t.Errorf("no add was still running at its kill (delays %v): make the tree bigger", delays)
			}
			start := time.Now()
			got := mustStorefs(t, state, append([]string{"add"}, srcs...)...).lines()
			t.Logf("the complete add took %v", time.Since(start).Round(time.Millisecond))
			if !slices.Equal(got, want) {
				t.Errorf("storefs add printed %q, want %q", got, want)
			}
			checkValidItems(t, state, mode, want)
		})
	}
}

// killAddAfter starts `storefs add srcs...`, SIGKILLs it after d and checks
// the store. It reports whether the process was still running when killed.
func killAddAfter(t *testing.T, state string, srcs, want []string, d time.Duration) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := storefsCmd(ctx, state, append([]string{"add"}, srcs...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	time.Sleep(d)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	killed := ws.Signaled() && ws.Signal() == syscall.SIGKILL
	if !killed {
		t.Logf("kill after %v: the add had already ended (%v; printed %q, stderr %q)", d, cmd.ProcessState, out.String(), errb.String())
		if !cmd.ProcessState.Success() {
			t.Errorf("kill after %v: the add failed on its own: %v\n%s", d, cmd.ProcessState, errb.String())
		}
	}
	// what the dead process left in tmp/ (its staging dir and lock file)
	prefix := strconv.Itoa(pid) + "-"
	leftovers := tmpEntries(t, state, prefix)
	if killed {
		t.Logf("killed after %v: printed %d path(s); left in tmp/: %v", d, len(splitLines(out.String())), leftovers)
	}

	// the next storefs command works and removes the dead process's leftovers
	ls := listStore(t, state)
	t.Logf("kill after %v: %d of %d items valid", d, len(ls), len(want))
	if left := tmpEntries(t, state, prefix); len(left) > 0 {
		t.Errorf("kill after %v: after storefs ls, tmp/ still holds the dead process's %v", d, left)
	}
	checkTmpEmpty(t, state)
	for _, p := range ls {
		if !slices.Contains(want, p) {
			t.Errorf("kill after %v: storefs ls lists %s, which is not one of the items added", d, p)
		}
	}
	// every path the dead process printed was valid
	for _, p := range splitLines(out.String()) {
		if !slices.Contains(ls, p) {
			t.Errorf("kill after %v: the add printed %s before dying but it is not valid", d, p)
		}
	}
	// valid paths are complete: verify recomputes every NAR hash and blob key
	checkVerify(t, state)
	checkTmpEmpty(t, state)
	return killed
}

func tmpEntries(t *testing.T, state, prefix string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(state, "tmp"))
	if err != nil {
		t.Fatalf("reading tmp/: %v", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}
