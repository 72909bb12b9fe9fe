package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// The daemon tests: `storefs daemon` owns a store and serves every verb on
// <state>/daemon.sock. Each test starts its own daemon process on its own
// store and always stops it at cleanup (SIGTERM, then SIGKILL).

// daemonReadyTimeout bounds how long a daemon may take to start serving, and
// daemonStopTimeout how long it may take to exit after SIGTERM before the
// cleanup kills it.
const (
	daemonReadyTimeout = 15 * time.Second
	daemonStopTimeout  = 15 * time.Second
)

// daemonProc is a running `storefs daemon` process.
type daemonProc struct {
	state string
	cmd   *exec.Cmd
	out   *syncBuffer   // its stdout and stderr
	done  chan struct{} // closed once the process has been waited for
}

// startDaemon starts `storefs daemon [args]` on the store in state (with the
// binary bin, storefsBin when empty), waits until it serves (its "serving"
// line and the socket), and stops it at the test's cleanup.
func startDaemon(t testing.TB, state string, args ...string) *daemonProc {
	t.Helper()
	return startDaemonBin(t, storefsBin, state, args...)
}

func startDaemonBin(t testing.TB, bin, state string, args ...string) *daemonProc {
	t.Helper()
	full := append([]string{"--state", state, "--no-progress", "daemon"}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Env = storefsEnv()
	d := &daemonProc{state: state, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting storefs daemon: %v", err)
	}
	go func() { cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		if code, _, killed := d.stop(daemonStopTimeout); killed {
			t.Errorf("cleanup: storefs daemon (pid %d) did not exit within %v of SIGTERM and was killed (exit %d); its output:\n%s",
				d.pid(), daemonStopTimeout, code, d.out.String())
		} else if t.Failed() {
			t.Logf("storefs daemon (pid %d) output:\n%s", d.pid(), d.out.String())
		}
	})
	deadline := time.Now().Add(daemonReadyTimeout)
	for {
		select {
		case <-d.done:
			t.Fatalf("storefs daemon exited before serving (%v); its output:\n%s", cmd.ProcessState, d.out.String())
		default:
		}
		if strings.Contains(d.out.String(), "storefs daemon: serving") {
			if fi, err := os.Lstat(daemon.SocketPath(state)); err == nil && fi.Mode()&fs.ModeSocket != 0 {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("storefs daemon did not serve within %v; its output:\n%s", daemonReadyTimeout, d.out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (d *daemonProc) pid() int { return d.cmd.Process.Pid }

func (d *daemonProc) exited() bool { return isClosed(d.done) }

// exitCode is the daemon's exit status (-1 when killed by a signal).
func (d *daemonProc) exitCode() int { return d.cmd.ProcessState.ExitCode() }

// stop sends SIGTERM and waits up to timeout for the daemon to exit, then
// SIGKILLs it. It returns the exit status, how long the daemon took, and
// whether it had to be killed. A daemon that already exited is left alone.
func (d *daemonProc) stop(timeout time.Duration) (code int, took time.Duration, killed bool) {
	if d.exited() {
		return d.exitCode(), 0, false
	}
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
		killed = true
	}
	return d.exitCode(), time.Since(start), killed
}

// kill9 SIGKILLs the daemon and waits for it.
func (d *daemonProc) kill9() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// mustStop stops the daemon with SIGTERM and fails the test unless it exits
// 0 and removes its socket.
func (d *daemonProc) mustStop(t testing.TB) {
	t.Helper()
	code, took, killed := d.stop(daemonStopTimeout)
	switch {
	case killed:
		t.Errorf("storefs daemon did not exit within %v of SIGTERM; killed", daemonStopTimeout)
	case code != 0:
		t.Errorf("storefs daemon exited %d after SIGTERM (in %v); output:\n%s", code, took, d.out.String())
	}
	if _, err := os.Lstat(daemon.SocketPath(d.state)); err == nil {
		t.Errorf("storefs daemon exited but left %s", daemon.SocketPath(d.state))
	}
}

// storefsStdin is storefs() with stdin.
func storefsStdin(t testing.TB, state string, stdin []byte, args ...string) result {
	t.Helper()
	return runStorefs(t, commandTimeout, bytes.NewReader(stdin), append([]string{storefsBin, "--state", state, "--no-progress"}, args...)...)
}

// narSHA256 is the hex sha256 of the NAR of src (what `nix-store --dump`
// writes), computed here.
func narSHA256(t testing.TB, src string) [32]byte {
	t.Helper()
	h := sha256.New()
	if err := nar.DumpPath(h, src); err != nil {
		t.Fatalf("dumping %s: %v", src, err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// sourcePath is the store path `storefs add` gives src under storeDir
// (computed here from its NAR, without storefs).
func sourcePath(t testing.TB, storeDir, src string) string {
	t.Helper()
	return store.MakeSourcePath(storeDir, narSHA256(t, src), filepath.Base(src), nil)
}

// exportSHA256 runs `storefs export p` and returns the sha256 of what it
// wrote (streamed, not kept).
func exportSHA256(t testing.TB, state, p string) ([32]byte, int64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := storefsCmd(ctx, state, "export", p)
	h := sha256.New()
	cw := &countWriter{w: h}
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = cw, &errb
	var sum [32]byte
	if err := cmd.Run(); err != nil {
		return sum, 0, fmt.Errorf("storefs export %s: %v: %s", p, err, errb.String())
	}
	copy(sum[:], h.Sum(nil))
	return sum, cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// client is one started storefs process.
type client struct {
	args      []string
	out, errb bytes.Buffer
	err       error
	done      chan struct{}
}

// startClient starts `storefs args...` on state; wait with <-c.done.
func startClient(t testing.TB, ctx context.Context, state string, args ...string) *client {
	t.Helper()
	c := &client{args: args, done: make(chan struct{})}
	cmd := storefsCmd(ctx, state, args...)
	cmd.Stdout, cmd.Stderr = &c.out, &c.errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting storefs %s: %v", strings.Join(args, " "), err)
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	return c
}

func (c *client) finished() bool { return isClosed(c.done) }

// daemonItems generates, for each of n clients, k items: every item has a
// large file and a small one shared by all clients (identical content), a
// file of its own and a random subtree; all n*k items are distinct.
func daemonItems(t testing.TB, dir string, n, k int) [][]string {
	shared := newRNG(7000).bytes(1<<20 + 3)
	small := []byte("one small file in every item\n")
	out := make([][]string, n)
	for i := range n {
		for j := range k {
			p := filepath.Join(dir, fmt.Sprintf("c%d", i), fmt.Sprintf("item-%d-%d", i, j))
			g := gen{t: t, r: newRNG(uint64(7100 + 10*i + j))}
			g.dir(p)
			g.file(filepath.Join(p, "shared.bin"), shared, false)
			g.file(filepath.Join(p, "shared.txt"), small, j%2 == 0)
			g.file(filepath.Join(p, "own.bin"), g.r.bytes(64<<10+7*i+j), j == 3)
			g.randomDir(filepath.Join(p, "random"), 2)
			out[i] = append(out[i], p)
		}
	}
	return out
}

// TestDaemonManyClients: 8 `storefs add` processes at once, 5 items each
// (content shared between them), through one daemon, in both modes: all
// exit 0 and print the right paths, the 40 paths are valid and verify
// through the daemon; after SIGTERM the daemon exits 0 without its socket and
// the embedded storefs verifies and lists the same 40 paths.
func TestDaemonManyClients(t *testing.T) {
	const nclients, nitems = 8, 5
	srcs := daemonItems(t, tempDir(t), nclients, nitems)
	want := make([][]string, nclients)
	var all []string
	for i := range nclients {
		for _, src := range srcs[i] {
			p := sourcePath(t, "/gnu/store", src)
			want[i] = append(want[i], p)
			all = append(all, p)
		}
	}
	slices.Sort(all)
	if len(slices.Compact(slices.Clone(all))) != nclients*nitems {
		t.Fatalf("setting up: the %d items do not have distinct paths", nclients*nitems)
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			d := startDaemon(t, state)
			ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
			defer cancel()
			start := time.Now()
			cs := make([]*client, nclients)
			for i := range nclients {
				cs[i] = startClient(t, ctx, state, append([]string{"add"}, srcs[i]...)...)
			}
			for _, c := range cs {
				<-c.done
			}
			t.Logf("%d clients added %d items through the daemon in %v", nclients, nclients*nitems, time.Since(start).Round(time.Millisecond))
			for i, c := range cs {
				if c.err != nil {
					t.Errorf("client %d (storefs add of %d items): %v\nstderr:\n%s", i, nitems, c.err, c.errb.String())
					continue
				}
				if got := splitLines(c.out.String()); !slices.Equal(got, want[i]) {
					t.Errorf("client %d printed %q\nwant %q", i, got, want[i])
				}
			}
			if d.exited() {
				t.Fatalf("the daemon died during the adds: %v\n%s", d.cmd.ProcessState, d.out.String())
			}
			// the daemon owns the registry: --no-daemon is refused, not blocked
			if r := storefs(t, state, "--no-daemon", "ls"); r.code != 1 || !strings.Contains(r.stderr, "daemon") {
				t.Errorf("storefs --no-daemon ls while the daemon runs: exit %d, stderr %q; want exit 1 naming the daemon", r.code, r.stderr)
			}
			if ls := listStore(t, state); !slices.Equal(ls, all) {
				t.Errorf("storefs ls through the daemon: %d paths %v\nwant the %d paths %v", len(ls), ls, len(all), all)
			}
			r := storefs(t, state, "verify", "--contents", "--json")
			var rep store.VerifyReport
			if r.code != 0 {
				t.Errorf("storefs verify --contents through the daemon: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			} else if err := json.Unmarshal(r.stdout, &rep); err != nil || rep.Paths != len(all) || len(rep.Problems) != 0 {
				t.Errorf("storefs verify --contents --json through the daemon: %s (%v); want %d paths and no problems", r.stdout, err, len(all))
			}

			d.mustStop(t)
			r = storefs(t, state, "verify", "--contents")
			if r.code != 0 {
				t.Errorf("embedded storefs verify --contents after the daemon stopped: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			if wantMsg := fmt.Sprintf("checked %d paths and their contents: 0 problem(s)", len(all)); !strings.Contains(r.stderr, wantMsg) {
				t.Errorf("embedded storefs verify --contents said %q, want %q", r.stderr, wantMsg)
			}
			if ls := listStore(t, state); !slices.Equal(ls, all) {
				t.Errorf("embedded storefs ls after the daemon stopped: %v\nwant %v", ls, all)
			}
			checkTmpEmpty(t, state)
		})
	}
}

var (
	regTimeText = regexp.MustCompile(`(?m)^registrationTime: .*$`)
	regTimeJSON = regexp.MustCompile(`"registrationTime": "[^"]*"`)
)

// sameOutputStep is one verb run on both stores.
type sameOutputStep struct {
	args  []string
	stdin []byte // nil: no stdin
	code  int    // the exit status the embedded run must have
}

// TestDaemonSameOutput runs a sequence of verbs embedded on store A and
// through a daemon on an identical store B (same inputs, so the same paths):
// stdout, stderr and the exit status must be the same, for successes and
// for errors (a path that is not valid, malformed NARs, bad sources), in
// both modes.
func TestDaemonSameOutput(t *testing.T) {
	dir := tempDir(t)
	srcDir := filepath.Join(dir, "src")
	cases := []treeCase{treeCases[0], treeCases[1], treeCases[2], treeCases[3], treeCases[4], treeCases[8], treeCases[10], treeCases[12]}
	srcs := generate(t, srcDir, cases)
	byName := map[string]string{}
	for i, c := range cases {
		byName[c.name] = srcs[i]
	}
	p := func(name string) string { return sourcePath(t, "/gnu/store", byName[name]) }
	g := gen{t: t, r: newRNG(77)}
	extra := filepath.Join(dir, "extra")
	g.dir(extra)
	// a tree that only a third store holds, to import from its NAR and bundle
	third := filepath.Join(dir, "third-party")
	g.file(filepath.Join(third, "bin/tool"), []byte("#!/bin/sh\necho tool\n"), true)
	g.file(filepath.Join(third, "share/doc"), g.r.bytes(5000), false)
	fifoDir := filepath.Join(extra, "with-fifo")
	g.dir(fifoDir)
	g.file(filepath.Join(fifoDir, "a"), []byte("a\n"), false)
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	scratch := initStore(t, "blob", "/gnu/store")
	thirdPath := strings.TrimSpace(string(mustStorefs(t, scratch, "add", third).stdout))
	dependent := filepath.Join(dir, "dependent")
	g.file(filepath.Join(dependent, "uses"), []byte(thirdPath+"\n"), false)
	depPath := strings.TrimSpace(string(mustStorefs(t, scratch, "add", "--ref", thirdPath, dependent).stdout))
	narFile := filepath.Join(extra, "third.nar")
	if err := os.WriteFile(narFile, mustStorefs(t, scratch, "export", thirdPath).stdout, 0o644); err != nil {
		t.Fatal(err)
	}
	bundleFile := filepath.Join(extra, "bundle")
	if err := os.WriteFile(bundleFile, mustStorefs(t, scratch, "export", "--bundle", thirdPath, depPath).stdout, 0o644); err != nil {
		t.Fatal(err)
	}
	narBytes, _ := os.ReadFile(narFile)
	garbage := filepath.Join(extra, "garbage")
	if err := os.WriteFile(garbage, []byte("this is not an export bundle at all\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const notValid = "/gnu/store/00000000000000000000000000000000-not-valid"

	mixed1, bare, bexec, link, empty, big := p("mixed-1"), p("bare-file"), p("bare-exec"), p("top-link"), p("empty-dir"), p("big-tree")
	withRefs := store.MakeSourcePath("/gnu/store", narSHA256(t, byName["mixed-3"]), "with-refs", []string{mixed1, bare})
	steps := []sameOutputStep{
		{args: []string{"add", byName["mixed-1"], byName["mixed-2"], byName["bare-file"], byName["bare-exec"], byName["top-link"], byName["empty-dir"], byName["big-tree"]}},
		{args: []string{"add", "--name", "with-refs", "--ref", mixed1, "--ref", bare, byName["mixed-3"]}},
		{args: []string{"add", byName["mixed-1"]}}, // already valid
		{args: []string{"path", byName["mixed-3"]}},
		{args: []string{"path", "--name", "other", "--ref", bare, byName["mixed-2"]}},
		{args: []string{"ls"}},
		{args: []string{"info", mixed1, withRefs}},
		{args: []string{"info", "--json", mixed1, withRefs, bare, link}},
		{args: []string{"closure", withRefs}},
		{args: []string{"closure", bexec, withRefs, empty}},
		{args: []string{"cat", withRefs + "/regular.txt"}},
		{args: []string{"cat", mixed1 + "/nested/a/b/c/deep.txt"}},
		{args: []string{"cat", bexec}},
		{args: []string{"cat", big + "/sub/dup-b"}},
		{args: []string{"export", big}},
		{args: []string{"export", link}},
		{args: []string{"export", empty}},
		{args: []string{"export", "--bundle", withRefs, bexec}},
		{args: []string{"import", narFile}},
		{args: []string{"import", "--name", "via-stdin", "--ref", bare}, stdin: narBytes},
		{args: []string{"import", "--bundle", bundleFile}},
		{args: []string{"import", "--bundle", bundleFile}}, // already valid
		{args: []string{"info", depPath}},
		{args: []string{"closure", depPath}},
		{args: []string{"verify"}},
		{args: []string{"verify", "--contents"}},
		{args: []string{"verify", "--contents", "--json"}},
		{args: []string{"ls"}},
		// errors
		{args: []string{"info", notValid}, code: 1},
		{args: []string{"info", "--json", mixed1, notValid}, code: 1},
		{args: []string{"info", "/tmp/not-in-the-store"}, code: 1},
		{args: []string{"cat", notValid + "/x"}, code: 1},
		{args: []string{"cat", mixed1 + "/does-not-exist"}, code: 1},
		{args: []string{"cat", mixed1 + "/nested"}, code: 1},
		{args: []string{"export", notValid}, code: 1},
		{args: []string{"export", "--bundle", mixed1, notValid}, code: 1},
		{args: []string{"closure", notValid}, code: 1},
		{args: []string{"add", "--ref", notValid, byName["mixed-2"]}, code: 1},
		{args: []string{"add", fifoDir}, code: 1},
		{args: []string{"add", filepath.Join(extra, "does-not-exist")}, code: 1},
		{args: []string{"path", fifoDir}, code: 1},
		{args: []string{"import", "--bundle", garbage}, code: 1},
	}
	for _, c := range malformedNARs() {
		f := filepath.Join(extra, "bad-"+c.name+".nar")
		if err := os.WriteFile(f, c.nar, 0o644); err != nil {
			t.Fatal(err)
		}
		steps = append(steps, sameOutputStep{args: []string{"import", "--name", "bad", f}, code: 1})
	}
	steps = append(steps,
		sameOutputStep{args: []string{"import", "--name", "bad-stdin"}, stdin: malformedNARs()[0].nar, code: 1},
		sameOutputStep{args: []string{"ls"}},
		sameOutputStep{args: []string{"verify", "--contents"}},
	)

	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			a := initStore(t, mode, "/gnu/store")
			b := initStore(t, mode, "/gnu/store")
			d := startDaemon(t, b)
			norm := func(s, state string) string {
				s = strings.ReplaceAll(s, state, "$STATE")
				s = regTimeText.ReplaceAllString(s, "registrationTime: T")
				return regTimeJSON.ReplaceAllString(s, `"registrationTime": "T"`)
			}
			for i, st := range steps {
				cmdline := "storefs " + strings.Join(st.args, " ")
				ra := storefsStdin(t, a, st.stdin, st.args...)
				rb := storefsStdin(t, b, st.stdin, st.args...)
				if ra.code != st.code {
					t.Errorf("step %d, %s, embedded: exit %d, want %d; stderr:\n%s", i, cmdline, ra.code, st.code, ra.stderr)
				}
				if ra.code != rb.code {
					t.Errorf("step %d, %s: exit %d embedded, %d through the daemon\nstderr embedded: %s\nstderr daemon: %s", i, cmdline, ra.code, rb.code, ra.stderr, rb.stderr)
				}
				outA, outB := norm(string(ra.stdout), a), norm(string(rb.stdout), b)
				if outA != outB {
					if len(outA) > 4000 || len(outB) > 4000 {
						t.Errorf("step %d, %s: stdout differs: %s (sha256 %x embedded, %x daemon)", i, cmdline, firstDiff([]byte(outB), []byte(outA)), sha256.Sum256([]byte(outA)), sha256.Sum256([]byte(outB)))
					} else {
						t.Errorf("step %d, %s: stdout differs\nembedded:\n%s\nthrough the daemon:\n%s", i, cmdline, outA, outB)
					}
				}
				if errA, errB := norm(ra.stderr, a), norm(rb.stderr, b); errA != errB {
					t.Errorf("step %d, %s: stderr differs\nembedded:       %q\nthrough daemon: %q", i, cmdline, errA, errB)
				}
				if st.args[0] == "export" && ra.code == 0 && testing.Verbose() {
					t.Logf("%s: sha256 %x (embedded), %x (daemon)", cmdline, sha256.Sum256(ra.stdout), sha256.Sum256(rb.stdout))
				}
			}
			if d.exited() {
				t.Fatalf("the daemon died: %v", d.cmd.ProcessState)
			}
			if r := storefs(t, b, "--no-daemon", "ls"); r.code == 0 {
				t.Errorf("storefs --no-daemon ls on store B succeeded: the daemon does not own it?")
			}
			d.mustStop(t)
			checkTmpEmpty(t, a)
			checkTmpEmpty(t, b)
		})
	}
}

// worldReadable chmods 0755 the test's temp dir and its parent (t.TempDir
// makes both 0700), so that another user can reach what is below.
func worldReadable(t testing.TB, dir string) {
	t.Helper()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDaemonOtherUser: a daemon run by root on a store of root's refuses
// user nobody with a clear "permission denied" (no hang, no fallback to
// opening the registry); started with --group nogroup, it serves nobody.
func TestDaemonOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the daemon as root and a client as user nobody (uid 65534)")
	}
	var wrap []string
	if p, err := exec.LookPath("setpriv"); err == nil {
		wrap = []string{p, "--reuid=65534", "--regid=65534", "--clear-groups"}
	} else if p, err := exec.LookPath("runuser"); err == nil {
		wrap = []string{p, "-u", "nobody", "-g", "nogroup", "--"}
	} else {
		t.Skip("needs setpriv or runuser to run a client as user nobody")
	}
	dir := tempDir(t)
	worldReadable(t, dir)
	// the binary TestMain built lives in a 0700 temp dir: copy it where
	// nobody may run it
	bin := filepath.Join(dir, "storefs")
	data, err := os.ReadFile(storefsBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	mustStorefs(t, state, "init")
	src := filepath.Join(dir, "src", "item")
	generate(t, filepath.Join(dir, "src"), []treeCase{{"item", 1, mixedTree}})
	asNobody := func(wrap []string, args ...string) result {
		t.Helper()
		argv := append(slices.Clone(wrap), bin, "--state", state, "--no-progress")
		return runStorefs(t, 30*time.Second, nil, append(argv, args...)...)
	}
	if r := asNobody(wrap, "--help"); r.code != 0 {
		t.Fatalf("user nobody cannot run %s: exit %d, %s", bin, r.code, r.stderr)
	}

	d := startDaemonBin(t, bin, state)
	added := mustStorefs(t, state, "add", src).lines()
	start := time.Now()
	r := asNobody(wrap, "ls")
	t.Logf("storefs ls as nobody, daemon without --group: exit %d in %v, stderr %q", r.code, time.Since(start).Round(time.Millisecond), r.stderr)
	if r.code == 0 {
		t.Errorf("storefs ls as nobody succeeded (printed %q); want a refusal", r.stdout)
	}
	if !strings.Contains(r.stderr, "permission denied") && !strings.Contains(r.stderr, "belongs to another user") {
		t.Errorf("storefs ls as nobody: stderr %q; want a message with \"permission denied\" or \"belongs to another user\"", r.stderr)
	}
	if strings.Contains(r.stderr, "registry") {
		t.Errorf("storefs ls as nobody fell back to the registry: %q", r.stderr)
	}
	if len(r.stdout) > 0 {
		t.Errorf("storefs ls as nobody printed %q", r.stdout)
	}
	d.mustStop(t)

	d = startDaemonBin(t, bin, state, "--group", "65534")
	fi, err := os.Stat(daemon.SocketPath(state))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	t.Logf("with --group 65534 the socket is %v, gid %d", fi.Mode(), st.Gid)
	r = asNobody(wrap, "ls")
	if r.code != 0 {
		t.Errorf("storefs ls as nobody through the daemon with --group 65534: exit %d, stderr %q", r.code, r.stderr)
	} else if got := r.lines(); !slices.Equal(got, added) {
		t.Errorf("storefs ls as nobody through the daemon with --group: %q, want %q", got, added)
	}
	// the same uid in another group is still refused
	if strings.HasSuffix(wrap[0], "setpriv") {
		other := []string{wrap[0], "--reuid=65534", "--regid=1", "--clear-groups"}
		r = asNobody(other, "ls")
		if r.code == 0 || (!strings.Contains(r.stderr, "permission denied") && !strings.Contains(r.stderr, "belongs to another user")) {
			t.Errorf("storefs ls as uid 65534 gid 1 through the daemon with --group 65534: exit %d, stderr %q; want a refusal", r.code, r.stderr)
		}
	}
	d.mustStop(t)
}

// TestDaemonStaleSocket: a daemon killed with SIGKILL leaves its socket; the
// next storefs command detects it, removes it, works embedded; a new daemon
// then starts on the same store.
func TestDaemonStaleSocket(t *testing.T) {
	dir := tempDir(t)
	srcs := generate(t, filepath.Join(dir, "src"), treeCases[:3])
	state := initStore(t, "blob", "/gnu/store")
	d := startDaemon(t, state)
	added := mustStorefs(t, state, append([]string{"add"}, srcs...)...).lines()
	slices.Sort(added)
	d.kill9()
	sock := daemon.SocketPath(state)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Fatalf("after kill -9 of the daemon, %s: %v, %v; want the stale socket left behind", sock, fi, err)
	}
	start := time.Now()
	r := storefs(t, state, "ls")
	t.Logf("storefs ls with a stale socket: exit %d in %v", r.code, time.Since(start).Round(time.Millisecond))
	if r.code != 0 {
		t.Errorf("storefs ls with a stale socket: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := r.lines(); !slices.Equal(got, added) {
		t.Errorf("storefs ls with a stale socket printed %q, want %q", got, added)
	}
	if r.stderr != "" {
		t.Errorf("storefs ls with a stale socket wrote to stderr: %q", r.stderr)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Errorf("storefs ls left the stale socket %s", sock)
	}
	checkTmpEmpty(t, state)
	d = startDaemon(t, state)
	if got := listStore(t, state); !slices.Equal(got, added) {
		t.Errorf("storefs ls through the new daemon: %q, want %q", got, added)
	}
	checkVerify(t, state)
	d.mustStop(t)

	// a stale socket is also no obstacle to a new daemon
	d = startDaemon(t, state)
	d.kill9()
	d = startDaemon(t, state)
	if got := listStore(t, state); !slices.Equal(got, added) {
		t.Errorf("storefs ls through a daemon started over a stale socket: %q, want %q", got, added)
	}
	d.mustStop(t)
}

// TestDaemonKill9DuringAdd SIGKILLs the daemon while a client adds a large
// tree (three items, about 300 MiB in 3000 files) through it, after a few
// different delays, in both modes. The client fails with an error; a
// restarted daemon clears the dead one's staging, verifies, and lists only
// items the client saw added. Then the add succeeds.
func TestDaemonKill9DuringAdd(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and adds 300 MiB; skipped with -short")
	}
	srcs := bigTree(t, tempDir(t), 3)
	var want []string
	for _, src := range srcs {
		want = append(want, sourcePath(t, "/gnu/store", src))
	}
	// the delays count from the moment the daemon starts on the add
	delays := map[string][]time.Duration{
		"blob":  {200 * time.Millisecond, 450 * time.Millisecond},
		"disk":  {300 * time.Millisecond, 500 * time.Millisecond},
		"chunk": {400 * time.Millisecond, 900 * time.Millisecond},
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { kill9DuringAdd(t, mode, srcs, want, delays[mode]) })
	}
}

func kill9DuringAdd(t *testing.T, mode string, srcs, want []string, delays []time.Duration) {
	state := initStore(t, mode, "/gnu/store")
	killedMidway := 0
	for _, delay := range delays {
		d := startDaemon(t, state)
		dpid := d.pid()
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		c := startClient(t, ctx, state, append([]string{"add"}, srcs...)...)
		// the delay counts from the moment the daemon works on the add (its
		// staging dir exists): a client that had not reached the daemon yet
		// would rightly fall back to opening the store itself
		if !waitFor(30*time.Second, func() bool { return len(stagingDirs(t, state, dpid)) > 0 || c.finished() }) {
			t.Fatalf("the daemon did not start the add within 30s")
		}
		time.Sleep(delay)
		running := !c.finished()
		d.kill9()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			t.Errorf("kill after %v: the client still runs 30s after the daemon died", delay)
			cancel()
			<-c.done
		}
		cancel()
		printed := splitLines(c.out.String())
		switch {
		case !running:
			t.Logf("kill after %v: the add had already ended (%v)", delay, c.err)
			if c.err != nil {
				t.Errorf("kill after %v: the add failed before the kill: %v\n%s", delay, c.err, c.errb.String())
			}
		case c.err == nil:
			t.Errorf("kill after %v: the client exited 0 although the daemon died under it (printed %q)", delay, printed)
		default:
			killedMidway++
			t.Logf("kill after %v: client %v, printed %d path(s), stderr: %s", delay, c.err, len(printed), strings.TrimSpace(c.errb.String()))
			if !strings.HasPrefix(c.errb.String(), "storefs: ") {
				t.Errorf("kill after %v: the client's stderr %q is not a storefs error message", delay, c.errb.String())
			}
		}
		prefix := strconv.Itoa(dpid) + "-"
		t.Logf("kill after %v: the dead daemon left in tmp/: %v", delay, tmpEntries(t, state, prefix))

		d2 := startDaemon(t, state)
		if left := tmpEntries(t, state, prefix); len(left) > 0 {
			t.Errorf("kill after %v: with the new daemon running, tmp/ still holds the dead daemon's %v", delay, left)
		}
		checkTmpEmpty(t, state)
		ls := listStore(t, state)
		t.Logf("kill after %v: %d of %d items valid", delay, len(ls), len(want))
		for _, p := range ls {
			if !slices.Contains(want, p) {
				t.Errorf("kill after %v: storefs ls lists %s, which is not one of the items added", delay, p)
			}
		}
		for _, p := range printed {
			if !slices.Contains(ls, p) {
				t.Errorf("kill after %v: the client printed %s but it is not valid", delay, p)
			}
		}
		checkVerify(t, state)
		checkTmpEmpty(t, state)
		d2.mustStop(t)
	}
	if killedMidway == 0 {
		t.Errorf("no add was still running at its kill (delays %v): make the tree bigger", delays)
	}
	d := startDaemon(t, state)
	start := time.Now()
	got := mustStorefs(t, state, append([]string{"add"}, srcs...)...).lines()
	t.Logf("the retried add took %v", time.Since(start).Round(time.Millisecond))
	if !slices.Equal(got, want) {
		t.Errorf("the retried add printed %q, want %q", got, want)
	}
	checkValidItems(t, state, mode, want)
	d.mustStop(t)
}

// stagingDirs are the staging dirs of process pid in tmp/ (not their lock
// files).
func stagingDirs(t testing.TB, state string, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(state, "tmp"))
	if err != nil {
		t.Fatalf("reading tmp/: %v", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), strconv.Itoa(pid)+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestDaemonSIGTERMDuringAdds: SIGTERM a daemon (--shutdown-timeout 1s)
// while 4 clients add trees of 7 to 108 MiB through it, in both modes: it exits 0 within a few
// seconds; every client either succeeded (its path valid) or failed with a
// clear error; the store verifies, and every valid path exports exactly its
// source's NAR.
func TestDaemonSIGTERMDuringAdds(t *testing.T) {
	const nclients = 4
	dir := tempDir(t)
	var srcs, want []string
	var sums [][32]byte
	for i := range nclients {
		src := filepath.Join(dir, fmt.Sprintf("medium-%d", i))
		writeTree(t, src, uint64(100+i), []int{60, 300, 600, 900}[i], 10, 1<<20)
		srcs = append(srcs, src)
		sum := narSHA256(t, src)
		sums = append(sums, sum)
		want = append(want, store.MakeSourcePath("/gnu/store", sum, filepath.Base(src), nil))
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			d := startDaemon(t, state, "--shutdown-timeout", "1s")
			ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
			defer cancel()
			cs := make([]*client, nclients)
			for i := range nclients {
				// -v: the client logs "using the daemon" when it does
				cs[i] = startClient(t, ctx, state, "-v", "add", srcs[i])
			}
			// every client reached the daemon (or is done) before the signal
			dpid := d.pid()
			if !waitFor(30*time.Second, func() bool {
				n := len(stagingDirs(t, state, dpid))
				for _, c := range cs {
					if c.finished() {
						n++
					}
				}
				return n >= nclients
			}) {
				t.Fatalf("the clients did not all reach the daemon within 30s")
			}
			time.Sleep(300 * time.Millisecond)
			running := 0
			for _, c := range cs {
				if !c.finished() {
					running++
				}
			}
			code, took, killed := d.stop(10 * time.Second)
			t.Logf("SIGTERM with %d of %d clients running: the daemon exited %d after %v", running, nclients, code, took.Round(time.Millisecond))
			if killed || code != 0 || took > 5*time.Second {
				t.Errorf("after SIGTERM the daemon exited %d in %v (killed: %v); want exit 0 within 5s (--shutdown-timeout 1s)\n%s", code, took, killed, d.out.String())
			}
			if _, err := os.Lstat(daemon.SocketPath(state)); err == nil {
				t.Errorf("the daemon exited but left its socket")
			}
			if running == 0 {
				t.Logf("every client had finished before SIGTERM: the trees are too small to test a cut")
			}
			failed := 0
			for i, c := range cs {
				<-c.done
				how := "embedded, after the daemon had gone"
				if strings.Contains(c.errb.String(), "using the daemon") {
					how = "through the daemon"
				}
				if c.err == nil {
					if got := splitLines(c.out.String()); !slices.Equal(got, want[i:i+1]) {
						t.Errorf("client %d succeeded but printed %q, want %q", i, got, want[i])
					}
					t.Logf("client %d succeeded (%s)", i, how)
					continue
				}
				failed++
				var msgs []string // the error, without -v's log lines
				for _, line := range splitLines(c.errb.String()) {
					if !strings.HasPrefix(line, "time=") {
						msgs = append(msgs, line)
					}
				}
				t.Logf("client %d failed (%v, %s): %s", i, c.err, how, strings.Join(msgs, "\n"))
				if len(msgs) != 1 || !strings.HasPrefix(msgs[0], "storefs: ") || !strings.Contains(msgs[0], "daemon") {
					t.Errorf("client %d: %q is not one clear storefs error message naming the daemon", i, msgs)
				}
			}
			t.Logf("%d client(s) cut by the shutdown, %d succeeded", failed, nclients-failed)

			r := storefs(t, state, "verify", "--contents")
			if r.code != 0 {
				t.Errorf("embedded storefs verify --contents: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			ls := listStore(t, state)
			for i, c := range cs {
				if c.err == nil && !slices.Contains(ls, want[i]) {
					t.Errorf("client %d succeeded but %s is not valid", i, want[i])
				}
			}
			for _, p := range ls {
				i := slices.Index(want, p)
				if i < 0 {
					t.Errorf("storefs ls lists %s, which is not one of the items added", p)
					continue
				}
				sum, n, err := exportSHA256(t, state, p)
				if err != nil {
					t.Error(err)
				} else if sum != sums[i] {
					t.Errorf("storefs export %s: %d bytes, sha256 %s; the source's NAR has sha256 %s", p, n, hex.EncodeToString(sum[:]), hex.EncodeToString(sums[i][:]))
				}
			}
			checkTmpEmpty(t, state)
			if mode == "disk" {
				for _, e := range diskStoreEntries(t, state) {
					if !slices.Contains(ls, "/gnu/store/"+e) {
						t.Logf("store/ holds %s, which is not valid (left by a cut add)", e)
					}
				}
			}
		})
	}
}

// tempRootFiles maps each file in <state>/temproots to its contents.
func tempRootFiles(t testing.TB, state string) map[string]string {
	t.Helper()
	dir := filepath.Join(state, "temproots")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// filesNaming are the temp-root files (other than the daemon's own, named
// by its pid) that list base.
func filesNaming(files map[string]string, base string, daemonPID int) []string {
	var out []string
	for name, content := range files {
		if name != strconv.Itoa(daemonPID) && slices.Contains(strings.Split(content, "\x00"), base) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// TestDaemonSessionTempRoots uses the daemon package's client: the temp
// roots of a session's requests are in a temp-roots file of their own under
// <state>/temproots while the session lasts, and the file goes when the
// session ends; a request outside any session leaves no file behind.
func TestDaemonSessionTempRoots(t *testing.T) {
	dir := tempDir(t)
	srcs := generate(t, filepath.Join(dir, "src"), []treeCase{treeCases[0], treeCases[1], treeCases[3]})
	state := initStore(t, "blob", "/gnu/store")
	d := startDaemon(t, state)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := daemon.Dial(state)
	if err != nil {
		t.Fatalf("daemon.Dial: %v", err)
	}
	defer c.Close()
	if pid := c.StoreInfo().PID; pid != d.pid() {
		t.Errorf("the daemon says its pid is %d, want %d", pid, d.pid())
	}
	end, err := c.Session(ctx)
	if err != nil {
		t.Fatalf("opening a session: %v", err)
	}
	ended := false
	defer func() {
		if !ended {
			end()
		}
	}()
	p1, err := c.Add(ctx, srcs[0], store.AddOptions{})
	if err != nil {
		t.Fatalf("adding %s in the session: %v", srcs[0], err)
	}
	p2, err := c.Add(ctx, srcs[1], store.AddOptions{})
	if err != nil {
		t.Fatalf("adding %s in the session: %v", srcs[1], err)
	}
	base1, base2 := filepath.Base(p1), filepath.Base(p2)
	files := tempRootFiles(t, state)
	f1, f2 := filesNaming(files, base1, d.pid()), filesNaming(files, base2, d.pid())
	t.Logf("temproots/ while the session is open: %q", files)
	if len(f1) != 1 {
		t.Fatalf("while the session is open, %d temp-roots files (besides the daemon's %d) list %s: %v; want 1 (temproots/: %q)", len(f1), d.pid(), base1, f1, files)
	}
	if !slices.Equal(f1, f2) {
		t.Errorf("the session's two adds are temp-rooted in %v and %v; want one file for the session", f1, f2)
	}
	sessionFile := f1[0]
	// still there a moment later: it lasts as long as the session, not the request
	time.Sleep(200 * time.Millisecond)
	if _, ok := tempRootFiles(t, state)[sessionFile]; !ok {
		t.Errorf("the session's temp-roots file %s went away while the session is open", sessionFile)
	}

	end()
	ended = true
	start := time.Now()
	if !waitFor(time.Second, func() bool { _, ok := tempRootFiles(t, state)[sessionFile]; return !ok }) {
		t.Errorf("the session's temp-roots file %s still exists 1s after the session ended: %q", sessionFile, tempRootFiles(t, state))
	} else {
		t.Logf("the session's temp-roots file went %v after the session ended", time.Since(start).Round(time.Millisecond))
	}

	// a request outside any session: its temp roots end with it
	before := tempRootFiles(t, state)
	c2, err := daemon.Dial(state)
	if err != nil {
		t.Fatalf("daemon.Dial: %v", err)
	}
	defer c2.Close()
	p3, err := c2.Add(ctx, srcs[2], store.AddOptions{})
	if err != nil {
		t.Fatalf("adding %s without a session: %v", srcs[2], err)
	}
	base3 := filepath.Base(p3)
	clean := func() bool {
		now := tempRootFiles(t, state)
		if len(filesNaming(now, base3, d.pid())) > 0 {
			return false
		}
		for name := range now {
			if _, ok := before[name]; !ok && name != strconv.Itoa(d.pid()) {
				return false
			}
		}
		return true
	}
	immediately := clean()
	if !waitFor(time.Second, clean) {
		t.Errorf("a request without a session left a temp-roots file behind: before %q, after %q", before, tempRootFiles(t, state))
	} else if !immediately {
		t.Logf("the request's temp-roots file went only after the response arrived")
	}
	if all := tempRootFiles(t, state); len(all) > 0 {
		for name := range all {
			if name != strconv.Itoa(d.pid()) {
				t.Errorf("temproots/ still holds %s after every session and request ended", name)
			}
		}
	}
	if ls := listStore(t, state); !sameSet(ls, []string{p1, p2, p3}) {
		t.Errorf("storefs ls = %v, want %v", ls, []string{p1, p2, p3})
	}
	d.mustStop(t)
}
