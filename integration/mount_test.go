package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/nar"
)

// The mount tests: `storefs mount MP` presents a blob-mode store through
// FUSE in the foreground (and serves <state>/daemon.sock meanwhile). Each
// test mounts its own store on its own mountpoint with startMount, whose
// cleanup always unmounts (SIGTERM, then SIGKILL, then a lazy umount) even
// when the test fails.
//
// FUSE is needed: the tests skip when /dev/fuse cannot be opened, and fail
// instead when STOREFS_TEST_FUSE=require.

const (
	mountReadyTimeout = 10 * time.Second // mount to appear in mountinfo
	mountStopTimeout  = 10 * time.Second // exit after SIGTERM/SIGINT (cleanup)
	mountBusyExit     = 8 * time.Second  // exit after SIGTERM while the mount is busy
	mountCmdTimeout   = 20 * time.Second // a refused `storefs mount` must exit by then
	mountNobodyUID    = 65534
)

// requireFUSE skips the test when /dev/fuse cannot be opened (or, for a
// non-root user, no fusermount3 is installed); with STOREFS_TEST_FUSE=require
// it fails instead.
func requireFUSE(t testing.TB) {
	t.Helper()
	var why string
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		why = fmt.Sprintf("cannot open /dev/fuse: %v", err)
	} else {
		f.Close()
		if os.Geteuid() != 0 {
			if _, err := exec.LookPath("fusermount3"); err != nil {
				if _, err2 := exec.LookPath("fusermount"); err2 != nil {
					why = "not root and neither fusermount3 nor fusermount is installed (apt-get install fuse3)"
				}
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("STOREFS_TEST_FUSE") == "require" {
		t.Fatalf("FUSE is required (STOREFS_TEST_FUSE=require) but not usable: %s", why)
	}
	t.Skipf("FUSE not usable here, skipping the mount test (set STOREFS_TEST_FUSE=require to make this a failure): %s", why)
}

// fuseForNobody makes sure user nobody (through prefix) can open
// /dev/fuse. Where it is 0600 (containers; stock distributions make it
// 0666) it skips, or with STOREFS_TEST_FUSE_CHMOD=1 makes it 0666 until the
// last test that asked is done (tests asking run in parallel).
func fuseForNobody(t *testing.T, prefix []string) {
	t.Helper()
	fuseChmod.Lock()
	defer fuseChmod.Unlock()
	if fuseChmod.users > 0 {
		fuseChmod.users++
		t.Cleanup(releaseFuseChmod)
		return
	}
	if _, _, err := mountRun(10*time.Second, nil, prefix[0], append(slices.Clone(prefix[1:]), "sh", "-c", "exec 3<>/dev/fuse")...); err == nil {
		return
	}
	fi, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("STOREFS_TEST_FUSE_CHMOD") != "1" {
		t.Skipf("user nobody cannot open /dev/fuse (mode %v here; stock distributions make it 0666): skipping; "+
			"STOREFS_TEST_FUSE_CHMOD=1 lets this test make it 0666 while it runs", fi.Mode())
	}
	if err := os.Chmod("/dev/fuse", 0o666); err != nil {
		t.Fatalf("chmod 0666 /dev/fuse: %v", err)
	}
	fuseChmod.old, fuseChmod.users = fi.Mode().Perm(), 1
	t.Logf("made /dev/fuse 0666 (Debian's default) for the tests that run storefs as nobody (STOREFS_TEST_FUSE_CHMOD=1); restoring %v after the last", fuseChmod.old)
	t.Cleanup(releaseFuseChmod)
}

var fuseChmod struct {
	sync.Mutex
	users int
	old   os.FileMode
}

func releaseFuseChmod() {
	fuseChmod.Lock()
	defer fuseChmod.Unlock()
	if fuseChmod.users--; fuseChmod.users == 0 {
		os.Chmod("/dev/fuse", fuseChmod.old)
	}
}

// mountProc is a running `storefs mount` process.
type mountProc struct {
	t      testing.TB
	mp     string // canonical absolute mountpoint (as in mountinfo)
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan struct{} // closed once the process has been waited for
	dev    string        // the mount's major:minor, from mountinfo
}

// startMount starts `storefs --state STATE mount [extraArgs] MP`, waits until
// MP is mounted (a new fuse.storefs entry in /proc/self/mountinfo), and
// registers a cleanup that stops it and always leaves MP unmounted.
func startMount(t testing.TB, state, mp string, extraArgs ...string) *mountProc {
	t.Helper()
	m, err := tryStartMount(t, state, mp, extraArgs...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tryStartMount is startMount that returns an error instead of failing when
// storefs exits or does not mount in time (the process is still stopped and
// MP unmounted at cleanup).
func tryStartMount(t testing.TB, state, mp string, extraArgs ...string) (*mountProc, error) {
	t.Helper()
	args := append(append([]string{"mount"}, extraArgs...), mp)
	return startMountCmd(t, mp, storefsCmd(context.Background(), state, args...))
}

// startMountCmd starts cmd (a `storefs mount` command line, possibly behind
// setpriv) that mounts mp, and waits for the mount.
func startMountCmd(t testing.TB, mp string, cmd *exec.Cmd) (*mountProc, error) {
	t.Helper()
	m := &mountProc{t: t, mp: canonicalMountpoint(t, mp), cmd: cmd, stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan struct{})}
	before := map[string]bool{}
	for _, e := range mountEntries(t, m.mp) {
		before[e.id+" "+e.dev] = true
	}
	cmd.Stdout, cmd.Stderr = m.stdout, m.stderr
	cmd.WaitDelay = 5 * time.Second // a helper (fusermount3) holding the pipes must not hang Wait
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", strings.Join(cmd.Args, " "), err)
	}
	go func() { cmd.Wait(); close(m.done) }()
	t.Cleanup(m.cleanup)
	deadline := time.Now().Add(mountReadyTimeout)
	for {
		// a new fuse.storefs entry; or, where one was there already (a stale
		// mount cleared and replaced: mount IDs and device numbers are
		// recycled), one once storefs says it mounted
		said := strings.Contains(m.stderr.String(), "mounted at")
		for _, e := range mountEntries(t, m.mp) {
			if e.fstype == "fuse.storefs" && (!before[e.id+" "+e.dev] || said) {
				m.dev = e.dev
				return m, nil
			}
		}
		select {
		case <-m.done:
			return m, fmt.Errorf("%s exited (%v) before mounting %s; stderr:\n%s", strings.Join(cmd.Args, " "), cmd.ProcessState, m.mp, m.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("%s: %s not mounted within %v; stderr:\n%s", strings.Join(cmd.Args, " "), m.mp, mountReadyTimeout, m.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (m *mountProc) pid() int { return m.cmd.Process.Pid }

func (m *mountProc) exited() bool { return isClosed(m.done) }

// waitExit waits up to d for the process to exit and reports whether it did.
func (m *mountProc) waitExit(d time.Duration) bool {
	select {
	case <-m.done:
		return true
	case <-time.After(d):
		return false
	}
}

// exitCode is the exit status (-1 when killed by a signal); only after exit.
func (m *mountProc) exitCode() int { return m.cmd.ProcessState.ExitCode() }

// stop sends sig and fails the test unless storefs exits 0 within
// mountStopTimeout and leaves nothing mounted at mp.
func (m *mountProc) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	m.cmd.Process.Signal(sig)
	if !m.waitExit(mountStopTimeout) {
		t.Fatalf("storefs mount (pid %d) still running %v after %v; stderr:\n%s", m.pid(), mountStopTimeout, sig, m.stderr.String())
	}
	if code := m.exitCode(); code != 0 {
		t.Errorf("storefs mount exited %d after %v, want 0; stderr:\n%s", code, sig, m.stderr.String())
	}
	if es := mountEntries(t, m.mp); len(es) > 0 {
		t.Errorf("storefs mount exited after %v but %s is still mounted: %v", sig, m.mp, es)
	}
}

// cleanup stops the process if it still runs (SIGTERM, then SIGKILL) and
// unmounts whatever is left at mp (umount -l, fusermount3 -u -z), then checks
// that mp is gone from mountinfo.
func (m *mountProc) cleanup() {
	t := m.t
	if !m.exited() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		if !m.waitExit(mountStopTimeout) {
			t.Errorf("cleanup: storefs mount (pid %d) still running %v after SIGTERM; killing it. stderr:\n%s", m.pid(), mountStopTimeout, m.stderr.String())
			m.cmd.Process.Kill()
			if !m.waitExit(5 * time.Second) {
				t.Errorf("cleanup: storefs mount (pid %d) did not die of SIGKILL (a thread stuck in a request to its own mount?); aborting its FUSE connection", m.pid())
				m.abortConnection()
			}
		}
	}
	if t.Failed() {
		t.Logf("storefs mount %s (pid %d) stderr:\n%s", m.mp, m.pid(), m.stderr.String())
	}
	for i := 0; i < 5 && len(mountEntries(t, m.mp)) > 0; i++ {
		if err := forceUnmount(m.mp); err != nil {
			t.Logf("cleanup: %v", err)
		}
	}
	if es := mountEntries(t, m.mp); len(es) > 0 {
		t.Errorf("cleanup: %s is still mounted after umount -l: %v", m.mp, es)
	}
}

// abortConnection aborts the mount's FUSE connection through fusectl (as
// root; fusectl is mounted for the occasion when it is not), which frees a
// storefs process stuck in the kernel waiting on its own dead mount, and
// waits for the process to go.
func (m *mountProc) abortConnection() {
	t := m.t
	_, minor, ok := strings.Cut(m.dev, ":")
	if !ok || os.Geteuid() != 0 {
		return
	}
	const ctl = "/sys/fs/fuse/connections"
	abort := filepath.Join(ctl, minor, "abort")
	if _, err := os.Stat(abort); err != nil {
		if out, err := exec.Command("mount", "-t", "fusectl", "fusectl", ctl).CombinedOutput(); err != nil {
			t.Logf("cleanup: mount -t fusectl %s: %v: %s", ctl, err, bytes.TrimSpace(out))
			return
		}
		defer exec.Command("umount", ctl).Run()
	}
	if err := os.WriteFile(abort, []byte("1"), 0o200); err != nil {
		t.Logf("cleanup: aborting FUSE connection %s: %v", m.dev, err)
		return
	}
	if !m.waitExit(5 * time.Second) {
		t.Errorf("cleanup: storefs mount (pid %d) still not gone after aborting its FUSE connection", m.pid())
	}
}

// waitServing waits until storefs says it serves the mount (its "mounted at"
// line, printed once its own start-up accesses to the mount are over).
func (m *mountProc) waitServing(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(mountReadyTimeout)
	for !strings.Contains(m.stderr.String(), "mounted at") {
		if m.exited() || time.Now().After(deadline) {
			t.Fatalf("storefs mount did not say \"mounted at\" within %v; stderr:\n%s", mountReadyTimeout, m.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// forceUnmount detaches whatever is mounted at mp: umount -l (root), else
// fusermount3 -u -z.
func forceUnmount(mp string) error {
	var errs []error
	if os.Geteuid() == 0 {
		out, err := exec.Command("umount", "-l", mp).CombinedOutput()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("umount -l %s: %v: %s", mp, err, bytes.TrimSpace(out)))
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if _, err := exec.LookPath(bin); err != nil {
			continue
		}
		out, err := exec.Command(bin, "-u", "-z", mp).CombinedOutput()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s -u -z %s: %v: %s", bin, mp, err, bytes.TrimSpace(out)))
		break
	}
	return errors.Join(errs...)
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	id, dev, mountpoint, fstype, source, superOpts string
}

func (e mountEntry) String() string {
	return fmt.Sprintf("{id %s %s %s %s}", e.id, e.fstype, e.source, e.superOpts)
}

// mountEntries lists the mounts whose mount point is mp, oldest first.
func mountEntries(t testing.TB, mp string) []mountEntry {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("reading mountinfo: %v", err)
	}
	var out []mountEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+3 > len(f) {
			continue
		}
		if p := mountUnescape(f[4]); p == mp {
			e := mountEntry{id: f[0], dev: f[2], mountpoint: p, fstype: f[sep+1], source: mountUnescape(f[sep+2])}
			if sep+3 < len(f) {
				e.superOpts = f[sep+3]
			}
			out = append(out, e)
		}
	}
	return out
}

var mountOctal = regexp.MustCompile(`\\[0-7]{3}`)

func mountUnescape(s string) string {
	return mountOctal.ReplaceAllStringFunc(s, func(o string) string {
		n, _ := strconv.ParseUint(o[1:], 8, 8)
		return string([]byte{byte(n)})
	})
}

// canonicalMountpoint is the absolute mp with symlinks of its parent
// resolved: what storefs mounts at and mountinfo shows.
func canonicalMountpoint(t testing.TB, mp string) string {
	t.Helper()
	abs, err := filepath.Abs(mp)
	if err != nil {
		t.Fatal(err)
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(dir, filepath.Base(abs))
	}
	return abs
}

// mountBlobStore is a fresh blob store with the given sources added; it
// returns the state dir and the store paths, in the order of srcs.
func mountBlobStore(t testing.TB, srcs ...string) (string, []string) {
	t.Helper()
	state := initStore(t, "blob", "/gnu/store")
	if len(srcs) == 0 {
		return state, nil
	}
	paths := mustStorefs(t, state, append([]string{"add"}, srcs...)...).lines()
	if len(paths) != len(srcs) {
		t.Fatalf("storefs add %v printed %q", srcs, paths)
	}
	return state, paths
}

// inMount is where store path p appears under the mountpoint mp.
func inMount(mp, p string) string { return filepath.Join(mp, filepath.Base(p)) }

func mountSHA256(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("reading %s: %v", p, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// mountRun runs a command (not storefs) with a timeout and returns its
// stdout, stderr and error; a command still running at the timeout is
// killed and reported as such.
func mountRun(timeout time.Duration, env []string, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after %v (hung?), killed: %w", timeout, err)
	}
	return out.String(), errb.String(), err
}

// mountRefused runs a `storefs mount` that must be refused and returns what
// it did; should it mount instead, it is stopped at mountCmdTimeout and MP
// unmounted.
func mountRefused(t testing.TB, state, mp string, args ...string) result {
	t.Helper()
	t.Cleanup(func() {
		for i := 0; i < 5 && len(mountEntries(t, canonicalMountpoint(t, mp))) > 0; i++ {
			forceUnmount(canonicalMountpoint(t, mp))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), mountCmdTimeout)
	defer cancel()
	cmd := storefsCmd(ctx, state, append(append([]string{"mount"}, args...), mp)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if cmd.ProcessState == nil {
		t.Fatalf("storefs mount %s: %v", mp, err)
	}
	r := result{stdout: out.Bytes(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
	if ctx.Err() != nil {
		t.Errorf("storefs mount %s %v: still running after %v: it mounted instead of refusing; stderr:\n%s", mp, args, mountCmdTimeout, errb.String())
	} else if err != nil && r.code < 0 {
		t.Fatalf("storefs mount %s: %v", mp, err)
	}
	return r
}

// pythonTree finds a CPython of pyenv: 3.11.7 when there, else the newest
// 3.x under $PYENV_ROOT/versions or /root/.pyenv/versions.
func pythonTree(t testing.TB) (dir, version string) {
	t.Helper()
	var roots []string
	if r := os.Getenv("PYENV_ROOT"); r != "" {
		roots = append(roots, filepath.Join(r, "versions"))
	}
	roots = append(roots, "/root/.pyenv/versions")
	usable := func(d string) bool {
		fi, err := os.Stat(filepath.Join(d, "bin", "python3"))
		return err == nil && fi.Mode()&0o111 != 0
	}
	for _, r := range roots {
		if d := filepath.Join(r, "3.11.7"); usable(d) {
			return d, "3.11.7"
		}
	}
	for _, r := range roots {
		ents, _ := os.ReadDir(r)
		var vs []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "3.") && usable(filepath.Join(r, e.Name())) {
				vs = append(vs, e.Name())
			}
		}
		if len(vs) > 0 {
			slices.SortFunc(vs, mountCompareVersions)
			v := vs[len(vs)-1]
			return filepath.Join(r, v), v
		}
	}
	t.Skipf("no pyenv CPython 3.x found under %v (bin/python3): this test runs a real program from the mount", roots)
	return "", ""
}

func mountCompareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, _ := strconv.Atoi(as[i])
		y, _ := strconv.Atoi(bs[i])
		if x != y {
			return x - y
		}
	}
	return len(as) - len(bs)
}

// pythonEnv is the environment of a CPython run from item (its binaries carry
// a RUNPATH to their build dir: LD_LIBRARY_PATH points at the mount's lib).
func pythonEnv(item string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PYTHON") || k == "LD_LIBRARY_PATH" || k == "LD_PRELOAD" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"LD_LIBRARY_PATH="+filepath.Join(item, "lib"),
		"PYTHONHOME="+item,
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONNOUSERSITE=1",
	)
}

// TestMountRealProgram adds a real CPython (pyenv) to a blob store, mounts
// it, and runs the interpreter from the mount in another process: it starts,
// imports json, email and asyncio from the mount, loads libpython from it,
// and reads stdlib files whose sha256 matches the source tree's. On each read
// path: files opened without a request (the default), and with
// --open-files, passthrough reads (as root) and --no-passthrough.
func TestMountRealProgram(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	src, version := pythonTree(t)
	minor := version[:strings.LastIndex(version, ".")] // 3.11
	start := time.Now()
	state, paths := mountBlobStore(t)
	paths = mustStorefs(t, state, "add", "--name", "python-"+version, src).lines()
	if len(paths) != 1 || !strings.HasSuffix(paths[0], "-python-"+version) {
		t.Fatalf("storefs add --name python-%s %s printed %q", version, src, paths)
	}
	t.Logf("added %s as %s in %v", src, paths[0], time.Since(start).Round(time.Millisecond))

	// files whose bytes are compared: stdlib sources, and libpython when shared
	rels := []string{
		filepath.Join("lib", "python"+minor, "json", "decoder.py"),
		filepath.Join("lib", "python"+minor, "email", "message.py"),
		filepath.Join("lib", "python"+minor, "asyncio", "base_events.py"),
	}
	if libs, _ := filepath.Glob(filepath.Join(src, "lib", "libpython"+minor+"*.so*")); len(libs) > 0 {
		if fi, err := os.Lstat(libs[0]); err == nil && fi.Mode().IsRegular() {
			rels = append(rels, strings.TrimPrefix(libs[0], src+"/"))
		}
	}
	want := make([]string, len(rels))
	for i, rel := range rels {
		want[i] = mountSHA256(t, filepath.Join(src, rel))
	}

	for _, variant := range [][]string{nil, {"--open-files"}, {"--open-files", "--no-passthrough"}} {
		t.Run("mount"+strings.Join(variant, ""), func(t *testing.T) {
			mp := filepath.Join(tempDir(t), "mnt")
			m := startMount(t, state, mp, variant...)
			item := inMount(m.mp, paths[0])
			env := pythonEnv(item)
			py := filepath.Join(item, "bin", "python3")

			out, errOut, err := mountRun(time.Minute, env, py, "-c", "import json, email, asyncio, sys; print(sys.version)")
			if err != nil {
				t.Fatalf("%s -c 'import json, email, asyncio, sys; print(sys.version)': %v\nstdout:\n%s\nstderr:\n%s", py, err, out, errOut)
			}
			if !strings.HasPrefix(strings.TrimSpace(out), version+" ") {
				t.Errorf("python from the mount printed sys.version %q, want %s ...", strings.TrimSpace(out), version)
			}

			const script = `import hashlib, json, email, asyncio, sys
print(sys.prefix)
print(json.__file__)
print(asyncio.__file__)
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libpython" in l})
print(libs[0] if libs else "-")
for p in sys.argv[1:]:
    with open(p, "rb") as f:
        print(hashlib.sha256(f.read()).hexdigest())
`
			args := []string{"-c", script}
			for _, rel := range rels {
				args = append(args, filepath.Join(item, rel))
			}
			out, errOut, err = mountRun(time.Minute, env, py, args...)
			if err != nil {
				t.Fatalf("python hash one-liner from the mount: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
			}
			lines := splitLines(out)
			if len(lines) != 4+len(rels) {
				t.Fatalf("python hash one-liner printed %d lines, want %d:\n%s\nstderr:\n%s", len(lines), 4+len(rels), out, errOut)
			}
			if lines[0] != item {
				t.Errorf("sys.prefix = %s, want the mounted item %s", lines[0], item)
			}
			for _, l := range lines[1:3] {
				if !strings.HasPrefix(l, item+"/") {
					t.Errorf("module loaded from %s, want a file under the mounted item %s", l, item)
				}
			}
			if lines[3] != "-" && !strings.HasPrefix(lines[3], item+"/") {
				t.Errorf("libpython mapped from %s, want the mounted item's (LD_LIBRARY_PATH=%s/lib)", lines[3], item)
			}
			for i, rel := range rels {
				if got := lines[4+i]; got != want[i] {
					t.Errorf("sha256 of %s read by python from the mount = %s, source tree's = %s", rel, got, want[i])
				}
			}
			m.stop(t, syscall.SIGTERM)
		})
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Logf("note: TestMountRealProgram took %v (budget about 60s)", d.Round(time.Second))
	}
}

// TestMountAsNobody: a user other than root (nobody) inits a store, adds to
// it and mounts it (through fusermount3); root sees the mount in mountinfo,
// the user sees the files as its own and reads them, and SIGTERM unmounts.
func TestMountAsNobody(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	nb := newNobody(t)
	asNobody := nb.prefix
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("fusermount3 is not installed (apt-get install fuse3): a non-root mount needs it")
	}
	// fusermount3 opens /dev/fuse as the calling user
	fuseForNobody(t, asNobody)

	home := nb.home
	g := gen{t: t, r: newRNG(77)}
	src := filepath.Join(home, "src", "nobody-item")
	g.file(filepath.Join(src, "hello.txt"), []byte("hello from nobody\n"), false)
	g.file(filepath.Join(src, "bin", "tool"), g.r.bytes(5000), true)
	src2 := filepath.Join(home, "src", "nobody-later")
	g.file(filepath.Join(src2, "later.txt"), []byte("added while mounted\n"), false)
	nb.chown()
	state := filepath.Join(home, "state")
	mp := filepath.Join(home, "mnt")
	nobody := func(args ...string) *exec.Cmd { return nb.cmd(state, args...) }
	run := nb.run
	run("storefs init", nobody("init", "--mode", "blob"))
	item := strings.TrimSpace(run("storefs add", nobody("add", src)))

	extra := []string{"mount"}
	allowOther := false
	if conf, err := os.ReadFile("/etc/fuse.conf"); err == nil && regexp.MustCompile(`(?m)^\s*user_allow_other\b`).Match(conf) {
		allowOther = true
		extra = append(extra, "--allow-other")
	}
	m, err := startMountCmd(t, mp, nobody(append(extra, mp)...))
	if err != nil {
		t.Fatal(err)
	}
	es := mountEntries(t, m.mp)
	if len(es) != 1 || es[0].fstype != "fuse.storefs" || !strings.Contains(es[0].superOpts, fmt.Sprintf("user_id=%d", mountNobodyUID)) {
		t.Errorf("mountinfo (seen by root) at %s = %v, want one fuse.storefs mount with user_id=%d", m.mp, es, mountNobodyUID)
	}

	// as nobody: owner 65534 everywhere, contents right
	sh := func(script string) string {
		return run(script, exec.Command(asNobody[0], append(slices.Clone(asNobody[1:]), "sh", "-c", script)...))
	}
	itemDir := inMount(m.mp, item)
	checkOwner := func(who, ls string) {
		t.Helper()
		n := 0
		for _, l := range splitLines(ls) {
			f := strings.Fields(l)
			if len(f) < 9 || f[0] == "total" {
				continue
			}
			n++
			if f[2] != strconv.Itoa(mountNobodyUID) || f[3] != strconv.Itoa(mountNobodyUID) {
				t.Errorf("ls -ln (as %s): %q is not owned by %d:%d", who, l, mountNobodyUID, mountNobodyUID)
			}
		}
		if n == 0 {
			t.Errorf("ls -ln (as %s) listed nothing:\n%s", who, ls)
		}
	}
	ls := sh(fmt.Sprintf("ls -ln %q %q %q", m.mp, itemDir, filepath.Join(itemDir, "bin")))
	t.Logf("ls -ln as nobody:\n%s", ls)
	checkOwner("nobody", ls)
	if got := sh(fmt.Sprintf("cat %q", filepath.Join(itemDir, "hello.txt"))); got != "hello from nobody\n" {
		t.Errorf("cat hello.txt (as nobody) = %q", got)
	}
	if got, want := sh(fmt.Sprintf("sha256sum < %q", filepath.Join(itemDir, "bin", "tool"))), mountSHA256(t, filepath.Join(src, "bin", "tool")); !strings.HasPrefix(got, want) {
		t.Errorf("sha256 of bin/tool read as nobody = %q, source's %s", got, want)
	}
	// root: without allow_other the kernel keeps other users (root too) out
	if allowOther {
		out, errOut, err := mountRun(10*time.Second, nil, "ls", "-ln", m.mp, itemDir)
		if err != nil {
			t.Errorf("ls -ln as root of a --allow-other mount: %v: %s", err, errOut)
		}
		checkOwner("root", out)
	} else if _, err := os.Stat(itemDir); !errors.Is(err, syscall.EACCES) {
		t.Errorf("stat %s as root of nobody's mount without --allow-other: %v, want EACCES (FUSE keeps other users out)", itemDir, err)
	}

	// storefs add from another process of nobody goes through the mount's
	// daemon.sock and appears at once
	later := strings.TrimSpace(run("storefs add (while mounted)", nobody("add", src2)))
	if got := sh(fmt.Sprintf("cat %q", filepath.Join(inMount(m.mp, later), "later.txt"))); got != "added while mounted\n" {
		t.Errorf("cat later.txt (added while mounted, as nobody) = %q", got)
	}

	m.stop(t, syscall.SIGTERM)
	if !strings.Contains(m.stderr.String(), "unmounted") {
		t.Errorf("storefs mount (as nobody) stderr does not say it unmounted:\n%s", m.stderr.String())
	}
}

// TestMountRefusals: a mountpoint inside the state dir, a non-empty one
// (unless --allow-nonempty) and a disk-mode store are refused; a stale mount
// left by a SIGKILLed storefs is cleared by the next mount.
func TestMountRefusals(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	srcDir := tempDir(t)
	g := gen{t: t, r: newRNG(91)}
	src := filepath.Join(srcDir, "refusal-item")
	g.file(filepath.Join(src, "file.txt"), []byte("contents\n"), false)
	state, paths := mountBlobStore(t, src)
	item := paths[0]

	t.Run("inside-state-dir", func(t *testing.T) {
		for _, mp := range []string{filepath.Join(state, "mnt"), state, filepath.Join(state, "blobs")} {
			_, existed := os.Lstat(mp)
			r := mountRefused(t, state, mp)
			if r.code == 0 || !strings.Contains(r.stderr, "inside the state dir") {
				t.Errorf("storefs mount %s (in the state dir): exit %d, stderr %q; want non-zero and \"inside the state dir\"", mp, r.code, r.stderr)
			}
			if _, err := os.Lstat(mp); existed != nil && err == nil {
				t.Errorf("storefs mount %s was refused but created %s inside the state dir (a refused mount should leave nothing behind)", mp, mp)
			}
		}
		if es := mountEntries(t, state); len(es) > 0 {
			t.Errorf("the state dir is mounted over: %v", es)
		}
	})

	t.Run("nonempty", func(t *testing.T) {
		mp := filepath.Join(tempDir(t), "full")
		g.file(filepath.Join(mp, "hidden.txt"), []byte("under the mount\n"), false)
		r := mountRefused(t, state, mp)
		if r.code == 0 || !strings.Contains(r.stderr, "not empty") {
			t.Errorf("storefs mount on a non-empty dir: exit %d, stderr %q; want non-zero and \"not empty\"", r.code, r.stderr)
		}
		m := startMount(t, state, mp, "--allow-nonempty")
		names := mountReadDirNames(t, m.mp)
		if !slices.Equal(names, []string{filepath.Base(item)}) {
			t.Errorf("ls of the --allow-nonempty mount = %v, want [%s]", names, filepath.Base(item))
		}
		if b, err := os.ReadFile(filepath.Join(inMount(m.mp, item), "file.txt")); err != nil || string(b) != "contents\n" {
			t.Errorf("reading file.txt from the --allow-nonempty mount: %q, %v", b, err)
		}
		m.stop(t, syscall.SIGTERM)
		if b, err := os.ReadFile(filepath.Join(mp, "hidden.txt")); err != nil || string(b) != "under the mount\n" {
			t.Errorf("after unmounting, the hidden file reads %q, %v", b, err)
		}
	})

	t.Run("disk-mode", func(t *testing.T) {
		disk := initStore(t, "disk", "/gnu/store")
		mustStorefs(t, disk, "add", src)
		mp := filepath.Join(tempDir(t), "disk-mnt")
		r := mountRefused(t, disk, mp)
		if r.code == 0 || !strings.Contains(r.stderr, "disk-mode") {
			t.Errorf("storefs mount of a disk-mode store: exit %d, stderr %q; want non-zero and a clear error naming the disk mode", r.code, r.stderr)
		}
		if es := mountEntries(t, canonicalMountpoint(t, mp)); len(es) > 0 {
			t.Errorf("disk-mode store got mounted: %v", es)
		}
	})

	t.Run("stale", func(t *testing.T) {
		mp := filepath.Join(tempDir(t), "stale")
		m := startMount(t, state, mp)
		// SIGKILL while go-fuse's start-up probe of its own mount is open would
		// leave a process stuck in the kernel (it flushes a file of its own dead
		// mount on exit): kill it once it serves, as a crash would.
		m.waitServing(t)
		file := filepath.Join(inMount(m.mp, item), "file.txt")
		if b, err := os.ReadFile(file); err != nil || string(b) != "contents\n" {
			t.Fatalf("reading %s: %q, %v", file, b, err)
		}
		m.cmd.Process.Kill()
		if !m.waitExit(5 * time.Second) {
			t.Fatalf("storefs mount (pid %d) did not die of SIGKILL within 5s", m.pid())
		}
		old := mountEntries(t, m.mp)
		if len(old) != 1 {
			t.Fatalf("after SIGKILL, mountinfo at %s = %v, want the dead mount", m.mp, old)
		}
		f, err := os.Open(m.mp)
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, syscall.ENOTCONN) {
			t.Fatalf("open %s after SIGKILL of its server: %v, want ENOTCONN (a dead FUSE mount)", m.mp, err)
		}
		m2, err := tryStartMount(t, state, mp)
		if err != nil {
			t.Fatalf("storefs mount over a stale mount (server SIGKILLed; open gives ENOTCONN) must clear it and mount; got: %v", err)
		}
		if !strings.Contains(m2.stderr.String(), "cleared a stale mount") {
			t.Errorf("storefs mount stderr does not say \"cleared a stale mount\":\n%s", m2.stderr.String())
		}
		if es := mountEntries(t, m.mp); len(es) != 1 {
			t.Errorf("after mounting over the stale mount, mountinfo at %s = %v, want only the new mount", m.mp, es)
		}
		if _, err := os.ReadDir(m.mp); err != nil {
			t.Errorf("readdir of the new mount: %v", err)
		}
		if b, err := os.ReadFile(file); err != nil || string(b) != "contents\n" {
			t.Errorf("reading %s from the new mount: %q, %v", file, b, err)
		}
		m2.stop(t, syscall.SIGTERM)
	})
}

func mountReadDirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestMountSignals: SIGINT unmounts cleanly (exit 0, socket removed); SIGTERM
// while the mount is busy (a reader holds a file open, another process has
// its cwd inside) still ends storefs within a few seconds and detaches the
// mount (lazily), and the reader does not hang.
func TestMountSignals(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	g := gen{t: t, r: newRNG(123)}
	src := filepath.Join(tempDir(t), "signal-item")
	big := g.r.bytes(8 << 20)
	g.file(filepath.Join(src, "sub", "big.bin"), big, false)
	g.file(filepath.Join(src, "small.txt"), []byte("small\n"), false)
	state, paths := mountBlobStore(t, src)
	item := paths[0]

	t.Run("SIGINT", func(t *testing.T) {
		m := startMount(t, state, filepath.Join(tempDir(t), "mnt"))
		if b, err := os.ReadFile(filepath.Join(inMount(m.mp, item), "small.txt")); err != nil || string(b) != "small\n" {
			t.Errorf("reading small.txt: %q, %v", b, err)
		}
		m.stop(t, syscall.SIGINT)
		if _, err := os.Lstat(daemon.SocketPath(state)); err == nil {
			t.Errorf("storefs mount exited after SIGINT but left %s", daemon.SocketPath(state))
		}
		if !strings.Contains(m.stderr.String(), "unmounted") {
			t.Errorf("stderr does not say it unmounted:\n%s", m.stderr.String())
		}
	})

	t.Run("SIGTERM-busy", func(t *testing.T) {
		m := startMount(t, state, filepath.Join(tempDir(t), "mnt"))
		itemDir := inMount(m.mp, item)
		bigFile := filepath.Join(itemDir, "sub", "big.bin")

		// reader: opens big.bin, reads 64 KiB, says "ready", waits for a line
		// on stdin, then reads the rest and prints how much it got.
		rest := filepath.Join(tempDir(t), "rest")
		reader := exec.Command("sh", "-c", `exec 3<"$1"; dd bs=65536 count=1 <&3 >/dev/null 2>&1; echo ready; read x; cat <&3 >"$2"; echo "cat=$?"`, "sh", bigFile, rest)
		readerIn, err := reader.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		readerOut := &syncBuffer{}
		reader.Stdout, reader.Stderr = readerOut, readerOut
		// holder: its cwd is inside the mount
		holder := exec.Command("sh", "-c", `cd "$1" && echo ready && exec sleep 120`, "sh", filepath.Join(itemDir, "sub"))
		holderOut := &syncBuffer{}
		holder.Stdout, holder.Stderr = holderOut, holderOut
		readerDone, holderDone := make(chan struct{}), make(chan struct{})
		for _, c := range []struct {
			cmd  *exec.Cmd
			done chan struct{}
		}{{reader, readerDone}, {holder, holderDone}} {
			c.cmd.WaitDelay = time.Second
			if err := c.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { c.cmd.Wait(); close(c.done) }()
		}
		// runs before the mount's cleanup (cleanups run last-in first-out)
		t.Cleanup(func() {
			reader.Process.Kill()
			holder.Process.Kill()
			<-readerDone
			<-holderDone
		})
		for _, o := range []*syncBuffer{readerOut, holderOut} {
			if !waitFor(10*time.Second, func() bool { return strings.Contains(o.String(), "ready") }) {
				t.Fatalf("helper process not ready within 10s: %q", o.String())
			}
		}

		start := time.Now()
		m.cmd.Process.Signal(syscall.SIGTERM)
		exited := m.waitExit(mountBusyExit)
		took := time.Since(start)
		if !exited {
			t.Errorf("storefs mount still running %v after SIGTERM while the mount is busy (a reader holds a file open, a process has its cwd inside); want it to exit (lazy unmount). stderr:\n%s", mountBusyExit, m.stderr.String())
		} else {
			t.Logf("storefs mount exited %d in %v after SIGTERM on a busy mount", m.exitCode(), took.Round(time.Millisecond))
		}
		if es := mountEntries(t, m.mp); len(es) > 0 {
			t.Errorf("%v after SIGTERM on a busy mount, %s is still in mountinfo: %v", took.Round(time.Millisecond), m.mp, es)
		}

		// the reader finishes (the whole file) or fails, but does not hang
		io.WriteString(readerIn, "go\n")
		readerIn.Close()
		select {
		case <-readerDone:
			out := strings.TrimSpace(readerOut.String())
			t.Logf("reader after SIGTERM of storefs: %v, output %q", reader.ProcessState, out)
			if strings.HasSuffix(out, "cat=0") {
				// it finished without an error: then it must have read the right bytes
				if b, err := os.ReadFile(rest); err != nil || !bytes.Equal(b, big[65536:]) {
					t.Errorf("the reader's cat of the open file exited 0 but read %d bytes that differ from the file's last %d (%v)", len(b), len(big)-65536, err)
				}
			}
		case <-time.After(15 * time.Second):
			reader.Process.Kill()
			t.Errorf("a reader of a file held open on the mount hung after SIGTERM of storefs (killed after 15s); output %q", readerOut.String())
		}
	})
}

// TestMountLiveAdd: while mounted, `storefs add` from another process goes
// through the mount's daemon.sock, and the new path exists under the
// mountpoint as soon as add returns, even after it was looked up (and
// missed) before the add.
func TestMountLiveAdd(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	g := gen{t: t, r: newRNG(55)}
	dir := tempDir(t)
	first := filepath.Join(dir, "first-item")
	g.file(filepath.Join(first, "a.txt"), []byte("first\n"), false)
	state, paths := mountBlobStore(t, first)
	m := startMount(t, state, filepath.Join(tempDir(t), "mnt"))

	// the mount serves the daemon socket
	var client *daemon.Client
	deadline := time.Now().Add(mountReadyTimeout)
	for {
		c, err := daemon.Dial(state)
		if err == nil {
			client = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mount serves no daemon on %s within %v: %v", daemon.SocketPath(state), mountReadyTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid := client.StoreInfo().PID; pid != m.pid() {
		t.Errorf("daemon.sock is served by pid %d, want the mount's %d", pid, m.pid())
	}
	client.Close()

	for i := range 3 {
		src := filepath.Join(dir, fmt.Sprintf("live-item-%d", i))
		g.file(filepath.Join(src, "data.bin"), g.r.bytes(1000+i), i == 1)
		g.link(filepath.Join(src, "link"), "data.bin")
		want := strings.TrimSpace(string(mustStorefs(t, state, "path", src).stdout))
		target := inMount(m.mp, want)
		// before: not listed, and a lookup misses (which could leave a
		// negative dentry in the kernel)
		if slices.Contains(mountReadDirNames(t, m.mp), filepath.Base(want)) {
			t.Fatalf("ls %s lists %s before it was added", m.mp, filepath.Base(want))
		}
		if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stat %s before the add: %v, want ENOENT", target, err)
		}
		got := mustStorefs(t, state, "add", src).lines()
		if len(got) != 1 || got[0] != want {
			t.Fatalf("storefs add %s = %q, storefs path said %s", src, got, want)
		}
		if _, err := os.Stat(target); err != nil {
			t.Errorf("stat %s right after storefs add returned: %v (a stale negative entry?)", target, err)
		}
		if b, err := os.ReadFile(filepath.Join(target, "data.bin")); err != nil || !bytes.Equal(b, mountReadFile(t, filepath.Join(src, "data.bin"))) {
			t.Errorf("reading data.bin of the live-added item: %v", err)
		}
		if !slices.Contains(mountReadDirNames(t, m.mp), filepath.Base(want)) {
			t.Errorf("ls %s does not list %s after the add", m.mp, filepath.Base(want))
		}
		paths = append(paths, want)
		if ls := listStore(t, state); !sameSet(ls, paths) {
			t.Errorf("storefs ls (through the mount's daemon) = %v, want %v", ls, paths)
		}
	}
	m.stop(t, syscall.SIGTERM)
}

func mountReadFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMountExportEqualsSource: every generated item read back through the
// mount dumps (nix-store --dump when installed, and storefs's own
// nar.DumpPath) to the NAR of its source, and find shows the store's
// canonical metadata: dirs 555, files 444 or 555, symlinks 777, mtime 1.
func TestMountExportEqualsSource(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	var cases []treeCase
	for _, c := range treeCases {
		switch c.name {
		case "mixed-1", "mixed-2", "bare-file", "bare-exec", "empty-file", "top-link", "top-link-abs", "empty-dir", "deep":
			cases = append(cases, c)
		}
	}
	srcs := generate(t, tempDir(t), cases)
	state, paths := mountBlobStore(t, srcs...)
	m := startMount(t, state, filepath.Join(tempDir(t), "mnt"))
	var nix *nixEnv
	if _, err := exec.LookPath("nix-store"); err == nil {
		nix = newNixEnv(t)
	} else {
		t.Log("nix-store not installed: comparing with storefs's nar.DumpPath only")
	}

	for i, c := range cases {
		src, item := srcs[i], inMount(m.mp, paths[i])
		t.Run(c.name, func(t *testing.T) {
			var want, got bytes.Buffer
			if err := nar.DumpPath(&want, src); err != nil {
				t.Fatalf("nar.DumpPath(source): %v", err)
			}
			if err := nar.DumpPath(&got, item); err != nil {
				t.Fatalf("nar.DumpPath(%s): %v", item, err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Errorf("NAR (nar.DumpPath) of the mounted item differs from the source's: %s", firstDiff(got.Bytes(), want.Bytes()))
			}
			if nix != nil {
				nsrc, nmnt := nix.dump(src), nix.dump(item)
				if !bytes.Equal(nmnt, nsrc) {
					t.Errorf("nix-store --dump %s differs from nix-store --dump of the source: %s", item, firstDiff(nmnt, nsrc))
				}
				if !bytes.Equal(nsrc, want.Bytes()) {
					t.Errorf("nix-store --dump and nar.DumpPath disagree on the source: %s", firstDiff(want.Bytes(), nsrc))
				}
			}
			if info := storefsInfo(t, state, paths[i])[0]; info.NarSize != int64(want.Len()) {
				t.Errorf("storefs info narSize = %d, the mounted item's NAR is %d bytes", info.NarSize, want.Len())
			}
			mountCheckFind(t, src, item)
		})
	}
}

// findEntry is one line of find -printf '%m %s %T@ %y %p\n'.
type findEntry struct {
	mode  string
	size  int64
	mtime string
	typ   string
}

func mountFind(t testing.TB, root string) map[string]findEntry {
	t.Helper()
	out, errOut, err := mountRun(time.Minute, nil, "find", root, "-printf", `%m %s %T@ %y %p\n`)
	if err != nil {
		t.Fatalf("find %s: %v: %s", root, err, errOut)
	}
	m := map[string]findEntry{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 5)
		if len(f) != 5 {
			t.Fatalf("find output line %q", sc.Text())
		}
		size, _ := strconv.ParseInt(f[1], 10, 64)
		rel := strings.TrimPrefix(strings.TrimPrefix(f[4], root), "/")
		m[rel] = findEntry{mode: f[0], size: size, mtime: f[2], typ: f[3]}
	}
	return m
}

func mountCheckFind(t *testing.T, src, item string) {
	t.Helper()
	want, got := mountFind(t, src), mountFind(t, item)
	if len(got) != len(want) {
		t.Errorf("find lists %d entries in the mounted item, %d in the source", len(got), len(want))
	}
	bad := 0
	for rel, w := range want {
		g, ok := got[rel]
		if !ok {
			t.Errorf("%q: in the source, missing from the mount", rel)
			continue
		}
		var wantMode string
		switch w.typ {
		case "d":
			wantMode = "555"
		case "f":
			wantMode = "444"
			if perm, _ := strconv.ParseUint(w.mode, 8, 32); perm&0o100 != 0 {
				wantMode = "555"
			}
		case "l":
			wantMode = "777"
		}
		mt, err := strconv.ParseFloat(g.mtime, 64)
		problem := ""
		switch {
		case g.typ != w.typ:
			problem = fmt.Sprintf("type %s, source's %s", g.typ, w.typ)
		case g.mode != wantMode:
			problem = fmt.Sprintf("mode %s, want %s", g.mode, wantMode)
		case err != nil || mt != 1:
			problem = fmt.Sprintf("mtime %s, want 1", g.mtime)
		case w.typ != "d" && g.size != w.size:
			problem = fmt.Sprintf("size %d, source's %d", g.size, w.size)
		}
		if problem != "" {
			if bad++; bad <= 10 {
				t.Errorf("find in the mount: %q: %s", rel, problem)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d entries differ in all", bad)
	}
}

// TestMountUnmountedFromOutside: after `umount MP` from outside, storefs
// mount exits 0 and says so, without unmounting MP again: a mount made at MP
// in the meantime (here a tmpfs, while storefs was stopped) stays mounted.
func TestMountUnmountedFromOutside(t *testing.T) {
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("mounting the tmpfs that takes the mountpoint's place needs root")
	}
	t.Parallel()
	g := gen{t: t, r: newRNG(7)}
	src := filepath.Join(tempDir(t), "outside-item")
	g.file(filepath.Join(src, "f"), []byte("f\n"), false)
	state, _ := mountBlobStore(t, src)
	m := startMount(t, state, filepath.Join(tempDir(t), "mnt"))
	m.waitServing(t)

	// Stopped, storefs cannot act between the unmount and the new mount.
	if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// umount2 itself: umount(8) would stat the mountpoint, a request the
	// stopped server never answers
	if err := syscall.Unmount(m.mp, 0); err != nil {
		m.cmd.Process.Signal(syscall.SIGCONT)
		t.Fatalf("umount %s: %v", m.mp, err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "storefs-test-tmpfs", m.mp).CombinedOutput(); err != nil {
		m.cmd.Process.Signal(syscall.SIGCONT)
		t.Fatalf("mount tmpfs at %s: %v: %s", m.mp, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", m.mp).Run() })
	m.cmd.Process.Signal(syscall.SIGCONT)

	if !m.waitExit(mountStopTimeout) {
		t.Fatalf("storefs mount still running %v after its mount was unmounted from outside; stderr:\n%s", mountStopTimeout, m.stderr.String())
	}
	if code := m.exitCode(); code != 0 || !strings.Contains(m.stderr.String(), "was unmounted from outside") {
		t.Errorf("storefs mount exited %d after an unmount from outside, want 0 and a line saying so; stderr:\n%s", code, m.stderr.String())
	}
	tmpfs := false
	for _, e := range mountEntries(t, m.mp) {
		tmpfs = tmpfs || e.fstype == "tmpfs"
	}
	if !tmpfs {
		t.Errorf("the tmpfs mounted at %s after storefs's mount went is gone: storefs unmounted a mount not its own (mountinfo: %v)", m.mp, mountEntries(t, m.mp))
	}
}

// TestMountCollectedThenReadded: with the mount's long kernel timeouts (an
// hour) and its cached root listing, an item deleted through the mount's
// daemon is gone from lookups and listings within a second, and added
// again it is listed and read back with its contents.
func TestMountCollectedThenReadded(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	g := gen{t: t, r: newRNG(77)}
	dir := tempDir(t)
	keep := filepath.Join(dir, "kept-item")
	g.file(filepath.Join(keep, "k"), []byte("kept\n"), false)
	state, _ := mountBlobStore(t, keep)
	m := startMount(t, state, filepath.Join(tempDir(t), "mnt"))
	m.waitServing(t)

	src := filepath.Join(dir, "again-item")
	data := g.r.bytes(200 << 10)
	g.file(filepath.Join(src, "bin", "data"), data, true)
	p := strings.TrimSpace(string(mustStorefs(t, state, "add", src).stdout))
	base := filepath.Base(p)
	file := filepath.Join(m.mp, base, "bin", "data")
	for range 2 { // entries, attributes, data and the listing now cached
		if b, err := os.ReadFile(file); err != nil || !bytes.Equal(b, data) {
			t.Fatalf("reading %s: %v", file, err)
		}
		if !slices.Contains(mountReadDirNames(t, m.mp), base) {
			t.Fatalf("ls %s lacks %s", m.mp, base)
		}
	}

	mustStorefs(t, state, "delete", p)
	start := time.Now()
	gone := waitFor(time.Second, func() bool {
		_, err := os.Lstat(filepath.Join(m.mp, base))
		return errors.Is(err, os.ErrNotExist) && !slices.Contains(mountReadDirNames(t, m.mp), base)
	})
	if !gone {
		t.Fatalf("%s still looked up or listed 1s after storefs delete", base)
	}
	t.Logf("deleted item gone from lookup and listing after %v", time.Since(start).Round(time.Microsecond))
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file of the deleted item still resolves: %v", err)
	}

	if got := strings.TrimSpace(string(mustStorefs(t, state, "add", src).stdout)); got != p {
		t.Fatalf("added again as %s, first as %s", got, p)
	}
	if !slices.Contains(mountReadDirNames(t, m.mp), base) {
		t.Errorf("ls %s lacks %s once added again", m.mp, base)
	}
	if b, err := os.ReadFile(file); err != nil || !bytes.Equal(b, data) {
		t.Errorf("reading %s once added again: %d bytes, %v", file, len(b), err)
	}
	mustStorefs(t, state, "verify", "--contents")
	m.stop(t, syscall.SIGTERM)
}
