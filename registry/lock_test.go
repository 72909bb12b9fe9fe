package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
)

func mustOpen(t *testing.T, path string, timeout time.Duration) *registry.Registry {
	t.Helper()
	r, err := registry.Open(path, registry.Options{Timeout: timeout})
	if err != nil {
		t.Fatalf("Open(%q) = %v; want no error", path, err)
	}
	return r
}

// Two handles in one process each open the file per transaction, so they
// take turns without deadlock (a deadlock would show as ErrLocked after the
// timeout).
func TestTwoHandlesSequential(t *testing.T) {
	r1 := registrytest.New(t, "disk")
	r2 := mustOpen(t, r1.Path(), 2*time.Second)
	handles := []*registry.Registry{r1, r2}
	var names []string
	for i := range 20 {
		r := handles[i%2]
		name := registrytest.Name(fmt.Sprintf("seq%02d", i))
		var refs []string
		if i > 0 {
			refs = []string{names[i-1]} // registered through the other handle
		}
		registrytest.MustRegister(t, r, registrytest.Reg(registrytest.Info(name, refs...)))
		names = append(names, name)
		other := handles[(i+1)%2]
		mustValid(t, other, name, true)
	}
	got, err := r2.Closure(names[len(names)-1:])
	if err != nil || !slices.Equal(got, names) {
		t.Errorf("Closure(%q) = %q, %v; want %q", names[len(names)-1], got, err, names)
	}
}

// Handles in several goroutines register concurrently; the file lock
// serialises their transactions.
func TestConcurrentHandlesInProcess(t *testing.T) {
	r := registrytest.New(t, "disk")
	base := registrytest.Name("base")
	registrytest.MustRegister(t, r, registrytest.Reg(registrytest.Info(base)))
	const handles, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, handles*each)
	for h := range handles {
		h2, err := registry.Open(r.Path(), registry.Options{Timeout: 20 * time.Second})
		if err != nil {
			t.Fatalf("Open = %v", err)
		}
		wg.Go(func() {
			for i := range each {
				name := registrytest.Name(fmt.Sprintf("g%d-%02d", h, i))
				if _, err := h2.Register(registrytest.Reg(registrytest.Info(name, base))); err != nil {
					errs <- err
				}
				if _, err := h2.Get(name); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Register/Get: %v", err)
	}
	if refs, err := r.Referrers(base); err != nil || len(refs) != handles*each {
		t.Errorf("Referrers(%q) = %d paths, %v; want %d", base, len(refs), err, handles*each)
	}
}

func TestHoldLocksOutOtherHandles(t *testing.T) {
	r1 := registrytest.New(t, "disk")
	registrytest.MustRegister(t, r1, registrytest.Reg(registrytest.Info(nA)))
	const timeout = 200 * time.Millisecond
	r2 := mustOpen(t, r1.Path(), timeout)

	if err := r1.Hold(); err != nil {
		t.Fatalf("Hold() = %v", err)
	}
	t.Cleanup(func() { r1.Release() }) // runs before the registrytest check
	if err := r1.Hold(); err != nil {
		t.Errorf("Hold() twice = %v; want nil", err)
	}
	// The holder works as usual.
	registrytest.MustRegister(t, r1, registrytest.Reg(registrytest.Info(nB, nA)))
	mustGet(t, r1, nB)

	locked := []struct {
		name string
		op   func() error
	}{
		{"Get", func() error { _, err := r2.Get(nA); return err }},
		{"IsValid", func() error { _, err := r2.IsValid(nA); return err }},
		{"Register", func() error { _, err := r2.Register(registrytest.Reg(registrytest.Info(nC))); return err }},
		{"List", func() error { return r2.List("", func(string) bool { return true }) }},
		{"Check", func() error { _, err := r2.Check(); return err }},
		{"Open", func() error { _, err := registry.Open(r1.Path(), registry.Options{Timeout: timeout}); return err }},
	}
	for _, op := range locked {
		start := time.Now()
		err := op.op()
		elapsed := time.Since(start)
		if !errors.Is(err, registry.ErrLocked) {
			t.Errorf("%s while another handle holds the registry = %v; want ErrLocked", op.name, err)
		}
		if elapsed > 2*time.Second {
			t.Errorf("%s took %v to fail; want about the %v timeout", op.name, elapsed, timeout)
		}
	}
	if ok, err := r1.IsValid(nC); err != nil || ok {
		t.Errorf("IsValid(%q) = %v, %v; want false (its Register failed)", nC, ok, err)
	}

	if err := r1.Release(); err != nil {
		t.Fatalf("Release() = %v", err)
	}
	if err := r1.Release(); err != nil {
		t.Errorf("Release() twice = %v; want nil", err)
	}
	// After Release the other handle sees what the holder registered.
	if pi, err := r2.Get(nB); err != nil || !slices.Equal(pi.References, []string{nA}) {
		t.Errorf("Get(%q) after Release = %+v, %v; want references [%q]", nB, pi, err, nA)
	}
	registrytest.MustRegister(t, r2, registrytest.Reg(registrytest.Info(nC)))
}

// A transaction waits for a holder that releases within the timeout.
func TestWaitForRelease(t *testing.T) {
	r1 := registrytest.New(t, "disk")
	registrytest.MustRegister(t, r1, registrytest.Reg(registrytest.Info(nA)))
	r2 := mustOpen(t, r1.Path(), 10*time.Second)
	if err := r1.Hold(); err != nil {
		t.Fatalf("Hold() = %v", err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := r2.Register(registrytest.Reg(registrytest.Info(nB, nA)))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Register while held returned at once: %v; want it to wait", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := r1.Release(); err != nil {
		t.Fatalf("Release() = %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Register after Release = %v; want no error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Register still waiting %v after Release", time.Since(start))
	}
	mustValid(t, r1, nB, true)
}

// The real thing: several processes register into one file at once.
func TestMultiProcessRegister(t *testing.T) {
	r := registrytest.New(t, "disk")
	base := registrytest.Name("common-base")
	registrytest.MustRegister(t, r, registrytest.Reg(registrytest.Info(base)))
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable() = %v", err)
	}
	const procs, each = 4, 50
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	type result struct {
		id  int
		out []byte
		err error
	}
	results := make(chan result, procs)
	start := time.Now()
	for id := range procs {
		cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
		cmd.Env = append(os.Environ(),
			envChild+"="+r.Path(),
			envChildID+"="+strconv.Itoa(id),
			envChildN+"="+strconv.Itoa(each),
			envChildRef+"="+base,
		)
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting child %d: %v", id, err)
		}
		go func() {
			err := cmd.Wait()
			results <- result{id, out.Bytes(), err}
		}()
	}
	for range procs {
		res := <-results
		if res.err != nil {
			t.Errorf("child %d: %v\n%s", res.id, res.err, res.out)
		}
	}
	t.Logf("%d processes registered %d paths each in %v", procs, each, time.Since(start))

	var all []string
	for id := range procs {
		for i := range each {
			name := childPath(strconv.Itoa(id), i)
			all = append(all, name)
			mustValid(t, r, name, true)
		}
	}
	if got := listAll(t, r); len(got) != procs*each+1 {
		t.Errorf("List = %d paths; want %d", len(got), procs*each+1)
	}
	refs, err := r.Referrers(base)
	if want := procs * ((each + 2) / 3); err != nil || len(refs) != want {
		t.Errorf("Referrers(%q) = %d paths, %v; want %d", base, len(refs), err, want)
	}
	if probs := mustCheck(t, r); len(probs) != 0 {
		t.Errorf("Check() = %v; want none", probs)
	}
}
