package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// treeBase is the random bytes writeTree takes its files' contents from.
var treeBase = sync.OnceValue(func() []byte { return newRNG(4242).bytes(16<<20 + 64<<10) })

// writeTree writes an item of files files in directories of 50: every
// bigEvery-th one of bigSize bytes (at most 16 MiB), the others of 16 B to
// 40 KiB, a seventh of them executable. Every file is distinct (a 16-byte
// header naming it by seed and index, then a slice of one random buffer, so
// that generating hundreds of MiB costs little).
func writeTree(t testing.TB, root string, seed uint64, files, bigEvery, bigSize int) {
	t.Helper()
	base := treeBase()
	r := newRNG(seed)
	for i := range files {
		d := filepath.Join(root, fmt.Sprintf("dir-%02d", i/50))
		if i%50 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		size := 16 + r.intn(40<<10)
		if i%bigEvery == 0 {
			size = bigSize
		}
		var hdr [16]byte
		binary.LittleEndian.PutUint64(hdr[:], seed)
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
		if err := f.Chmod(mode); err != nil { // whatever the umask
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// bigTree writes parts directories of about 100 MiB each (1000 files in 20
// directories: mostly small files, ten of 8 MiB).
func bigTree(t *testing.T, dir string, parts int) []string {
	var out []string
	for part := range parts {
		root := filepath.Join(dir, fmt.Sprintf("big-%d", part))
		writeTree(t, root, uint64(5000+part), 1000, 100, 8<<20)
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

// killAfter starts storefs args..., SIGKILLs it after d and reports whether
// it was still running then (if not, it must have succeeded).
func killAfter(t *testing.T, state string, d time.Duration, args ...string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := storefsCmd(ctx, state, args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return true
	}
	if !cmd.ProcessState.Success() {
		t.Errorf("storefs %v (kill after %v): failed on its own: %v\n%s", args, d, cmd.ProcessState, errb.String())
	}
	return false
}

// TestKillDuringOptimiseAndGC SIGKILLs `storefs optimise` and `storefs gc`
// at several moments in a disk store (--links-min-size 0) holding two
// copies of a large tree under other names. After each kill every valid item
// verifies and tmp/ is emptied by the next command. Then a complete optimise
// leaves each pair of copies on one inode, the next gc leaves no temp link in
// .links, and after killed collections the last one leaves exactly the
// rooted items.
func TestKillDuringOptimiseAndGC(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and adds 400 MiB; skipped with -short")
	}
	dir := tempDir(t)
	srcs := bigTree(t, dir, 2)
	for i, src := range slices.Clone(srcs) {
		cp := filepath.Join(dir, fmt.Sprintf("copy-%d", i))
		if out, err := exec.Command("cp", "-a", src, cp).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v %s", err, out)
		}
		srcs = append(srcs, cp)
	}
	state := filepath.Join(tempDir(t), "state")
	mustStorefs(t, state, "init", "--mode", "disk", "--links-min-size", "0")
	paths := mustStorefs(t, state, append([]string{"add", "--no-dedup"}, srcs...)...).lines()
	for i, p := range paths {
		mustStorefs(t, state, "root", "add", fmt.Sprintf("r%d", i), p)
	}

	killed := 0
	// kill later and later until one ends on its own
	for d := 10 * time.Millisecond; d < 20*time.Second; d *= 2 {
		if !killAfter(t, state, d, "optimise") {
			break
		}
		killed++
		checkValidItems(t, state, "disk", paths)
	}
	if killed < 2 {
		t.Errorf("optimise was killed %d times before one ended; want a kill in the middle", killed)
	}
	t.Logf("optimise killed %d times before one ended", killed)
	mustStorefs(t, state, "optimise")
	// big-i and copy-i are items of identical files: one inode per pair
	store := filepath.Join(state, "store")
	for i := range 2 {
		a, b := filepath.Join(store, filepath.Base(paths[i])), filepath.Join(store, filepath.Base(paths[i+2]))
		files := filesUnder(t, a)
		if len(files) != 1000 {
			t.Fatalf("%s holds %d files; want 1000", a, len(files))
		}
		for _, f := range files {
			var sa, sb syscall.Stat_t
			if syscall.Lstat(filepath.Join(a, f), &sa) != nil || syscall.Lstat(filepath.Join(b, f), &sb) != nil || sa.Ino != sb.Ino {
				t.Errorf("%s: the two copies do not share an inode after a complete optimise", f)
				break
			}
		}
	}
	mustStorefs(t, state, "gc") // everything is rooted: it only sweeps
	for _, e := range filesUnder(t, filepath.Join(store, ".links")) {
		if strings.HasPrefix(e, ".tmp-link-") {
			t.Errorf("temp link %s left in .links after a gc", e)
		}
	}
	checkValidItems(t, state, "disk", paths)

	// unroot big-1 and copy-1, and kill collections
	mustStorefs(t, state, "root", "remove", "r1")
	mustStorefs(t, state, "root", "remove", "r3")
	keep := []string{paths[0], paths[2]}
	// kill later and later until a collection ends on its own (each killed
	// one may have deleted a part)
	killed = 0
	for d := 10 * time.Millisecond; d < 20*time.Second; d *= 2 {
		if !killAfter(t, state, d, "gc") {
			break
		}
		killed++
		ls := listStore(t, state)
		for _, k := range keep {
			if !slices.Contains(ls, k) {
				t.Errorf("kill after %v: rooted %s is not valid", d, k)
			}
		}
		checkVerify(t, state)
		checkTmpEmpty(t, state)
	}
	t.Logf("gc killed %d times before one ended", killed)
	mustStorefs(t, state, "gc")
	checkValidItems(t, state, "disk", keep)
	checkVerify(t, state)
}
