package integration

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const procs = 8

// concurrentSources generates, for each of 8 processes, 5 different items:
// three of its own (which all share some files with every other process's),
// one "pair" item whose very source tree is also added by one other process,
// and one "same" item: identical contents in every process's own copy, so
// that all 8 add the same store path at once.
func concurrentSources(t *testing.T, dir string) [][]string {
	shared := newRNG(1000).bytes(3<<19 + 7) // 1.5 MiB: a large file, shared by all
	sharedSmall := []byte("the same small file everywhere\n")
	common := func(g gen, p string) {
		g.file(filepath.Join(p, "shared.bin"), shared, false)
		g.file(filepath.Join(p, "shared-small.txt"), sharedSmall, false)
		g.file(filepath.Join(p, "shared-exec"), sharedSmall, true)
	}
	args := make([][]string, procs)
	for i := range procs {
		for k := range 3 {
			p := filepath.Join(dir, fmt.Sprintf("p%d", i), fmt.Sprintf("own-%d-%d", i, k))
			g := gen{t: t, r: newRNG(uint64(100 + 10*i + k))}
			g.dir(p)
			common(g, p)
			g.file(filepath.Join(p, "unique.bin"), g.r.bytes(200<<10+i*k), k == 1)
			g.randomDir(filepath.Join(p, "random"), 2)
			args[i] = append(args[i], p)
		}
		pair := filepath.Join(dir, fmt.Sprintf("pair-%d", i/2))
		if i%2 == 0 {
			g := gen{t: t, r: newRNG(uint64(200 + i/2))}
			g.dir(pair)
			common(g, pair)
			g.file(filepath.Join(pair, fmt.Sprintf("big-%d", i/2)), g.r.bytes(1<<20+100), false)
			g.randomDir(filepath.Join(pair, "random"), 2)
		}
		args[i] = append(args[i], pair)
		same := filepath.Join(dir, fmt.Sprintf("p%d", i), "same")
		g := gen{t: t, r: newRNG(300)}
		g.dir(same)
		common(g, same)
		g.randomDir(filepath.Join(same, "random"), 2)
		args[i] = append(args[i], same)
	}
	return args
}

// TestConcurrentAdds: 8 `storefs add` processes at once on one store, each
// adding 5 items (shared files between them, two processes adding the very
// same tree, all eight adding one identical item). All exit 0 and print the
// right paths, `storefs ls` lists every path once and `storefs verify
// --contents` passes. Then the same again, with everything already valid.
func TestConcurrentAdds(t *testing.T) {
	args := concurrentSources(t, tempDir(t))
	// expected paths, from `storefs path` in a scratch store
	scratch := initStore(t, "blob", "/gnu/store")
	want := make([][]string, procs)
	var all []string
	for i := range procs {
		for _, src := range args[i] {
			p := strings.TrimSpace(string(mustStorefs(t, scratch, "path", src).stdout))
			want[i] = append(want[i], p)
			all = append(all, p)
		}
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if n := len(all); n != 3*procs+procs/2+1 {
		t.Fatalf("setting up: %d distinct expected paths, want %d", n, 3*procs+procs/2+1)
	}

	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			for round := range 2 {
				printed := runConcurrentAdds(t, state, args, want, round)
				for _, p := range printed {
					if !slices.Contains(all, p) {
						t.Errorf("round %d: storefs add printed %s, not one of the items", round, p)
					}
				}
				t.Logf("round %d: checking the store", round)
				checkValidItems(t, state, mode, all)
			}
		})
	}
}

// runConcurrentAdds starts one `storefs add` per process at once and checks
// what each printed. It returns the paths printed by the processes that
// succeeded; every process must succeed.
func runConcurrentAdds(t *testing.T, state string, args, want [][]string, round int) (printed []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	type proc struct {
		out, errb bytes.Buffer
		err       error
		done      chan struct{}
	}
	ps := make([]*proc, procs)
	for i := range procs {
		p := &proc{done: make(chan struct{})}
		ps[i] = p
		cmd := storefsCmd(ctx, state, append([]string{"add"}, args[i]...)...)
		cmd.Stdout, cmd.Stderr = &p.out, &p.errb
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting storefs add: %v", err)
		}
		go func() { p.err = cmd.Wait(); close(p.done) }()
	}
	for _, p := range ps {
		<-p.done
	}
	for i, p := range ps {
		if p.err != nil {
			t.Errorf("round %d: process %d (storefs add %s): %v\nstderr:\n%s", round, i, strings.Join(args[i], " "), p.err, p.errb.String())
			continue
		}
		if got := splitLines(p.out.String()); !slices.Equal(got, want[i]) {
			t.Errorf("round %d: process %d printed %q, want %q", round, i, got, want[i])
		}
		printed = append(printed, want[i]...)
	}
	return printed
}
