package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runItems adds, as nobody, an item "sh" holding a copy of the host's
// /bin/sh, and an item "hello" whose script has the stored shell as its
// interpreter (#!/gnu/store/...-sh/bin/sh) and refers to it, and an item
// nothing uses. It returns their store paths.
func runItems(t *testing.T, nb *nobodyUser, state, mode string) (sh, hello, unused string) {
	t.Helper()
	src := filepath.Join(nb.home, "src-"+mode)
	shell, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh to store: %v", err)
	}
	g := gen{t: t, r: newRNG(9)}
	g.file(filepath.Join(src, "sh", "bin", "sh"), shell, true)
	g.file(filepath.Join(src, "unused", "data"), []byte("nobody uses me\n"), false)
	nb.chown()
	nb.run("storefs init", nb.cmd(state, "init", "--mode", mode))
	sh = strings.TrimSpace(nb.run("storefs add sh", nb.cmd(state, "add", filepath.Join(src, "sh"))))
	g.file(filepath.Join(src, "hello", "bin", "hello"), fmt.Appendf(nil, "#!%s/bin/sh\necho \"hello from $0 ($#)\"\n", sh), true)
	nb.chown()
	hello = strings.TrimSpace(nb.run("storefs add hello", nb.cmd(state, "add", "--ref", sh, filepath.Join(src, "hello"))))
	unused = strings.TrimSpace(nb.run("storefs add unused", nb.cmd(state, "add", filepath.Join(src, "unused"))))
	return sh, hello, unused
}

// runAs runs storefs run as nobody and returns stdout, stderr and the exit
// status.
func runAs(t *testing.T, nb *nobodyUser, state string, args ...string) (string, string, int) {
	t.Helper()
	cmd := nb.cmd(state, append([]string{"run"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	timer := time.AfterFunc(commandTimeout, func() { cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("storefs run %q: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// TestRunAsNobody: an ordinary user (nobody) runs commands with its store at
// /gnu/store, in every mode: the items are listed there, a script whose
// interpreter is a stored shell runs from its store path, exit statuses and
// signals come through, an item added from outside appears inside, and a
// collection during the run keeps what the command uses.
func TestRunAsNobody(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	nb := newNobody(t)
	fuseForNobody(t, nb.prefix)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := filepath.Join(nb.home, "state-"+mode)
			sh, hello, unused := runItems(t, nb, state, mode)

			out, errOut, code := runAs(t, nb, state, "--", "ls", "/gnu/store")
			want := []string{filepath.Base(hello), filepath.Base(sh), filepath.Base(unused)}
			slices.Sort(want)
			if got := splitLines(out); code != 0 || !slices.Equal(got, want) {
				t.Errorf("run -- ls /gnu/store: exit %d, %q, stderr %q; want %q", code, got, errOut, want)
			}
			out, errOut, code = runAs(t, nb, state, "--", hello+"/bin/hello", "a", "b")
			if want := fmt.Sprintf("hello from %s/bin/hello (2)\n", hello); code != 0 || out != want {
				t.Errorf("run -- %s/bin/hello: exit %d, %q, stderr %q; want %q", hello, code, out, errOut, want)
			}
			out, _, code = runAs(t, nb, state, "--", "sh", "-c", "id -u; id -g; test -w /gnu/store || echo ro")
			if want := fmt.Sprintf("%d\n%d\nro\n", mountNobodyUID, mountNobodyUID); code != 0 || out != want {
				t.Errorf("run -- id: exit %d, %q; want %q (the caller's own ids, a read-only store)", code, out, want)
			}
			if out, _, code = runAs(t, nb, state, "--root", "--", "id", "-u"); code != 0 || out != "0\n" {
				t.Errorf("run --root -- id -u: exit %d, %q; want 0", code, out)
			}
			if _, _, code = runAs(t, nb, state, "--", "sh", "-c", "exit 7"); code != 7 {
				t.Errorf("run -- sh -c 'exit 7': exit %d", code)
			}
			if _, _, code = runAs(t, nb, state, "--", "sh", "-c", "kill -KILL $$"); code != 128+9 {
				t.Errorf("run -- a command killed by SIGKILL: exit %d, want 137", code)
			}
			if _, errOut, code = runAs(t, nb, state, "--", "/no/such/command"); code != 127 || !strings.Contains(errOut, "/no/such/command") {
				t.Errorf("run -- a missing command: exit %d, stderr %q; want 127 naming it", code, errOut)
			}

			// SIGTERM to storefs reaches the command.
			ready := filepath.Join(nb.home, "ready-"+mode)
			cmd := nb.cmd(state, "run", "--", "sh", "-c", fmt.Sprintf("trap 'echo got TERM; exit 5' TERM; touch %s; while :; do sleep 0.05; done", ready))
			var termOut bytes.Buffer
			cmd.Stdout = &termOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if !waitFor(20*time.Second, func() bool { _, err := os.Stat(ready); return err == nil }) {
				cmd.Process.Kill()
				t.Fatal("the command did not start")
			}
			cmd.Process.Signal(syscall.SIGTERM)
			err := cmd.Wait()
			if code := cmd.ProcessState.ExitCode(); code != 5 || termOut.String() != "got TERM\n" {
				t.Errorf("SIGTERM to storefs run: exit %d (%v), %q; want the command's trap: 5, \"got TERM\"", code, err, termOut.String())
			}

			// An item added from outside appears inside; a collection
			// meanwhile keeps the items the command uses (hello and its
			// interpreter) and deletes the one nobody uses.
			g := gen{t: t, r: newRNG(10)}
			laterSrc := filepath.Join(nb.home, "later-"+mode)
			g.file(filepath.Join(laterSrc, "f"), []byte("later\n"), false)
			nb.chown()
			laterPath := sourcePath(t, "/gnu/store", laterSrc)
			ready2, goOn := filepath.Join(nb.home, "ready2-"+mode), filepath.Join(nb.home, "go-"+mode)
			script := fmt.Sprintf("cd %s && touch %s && until test -e %s; do sleep 0.05; done; "+
				"until test -e %s/f; do sleep 0.05; done; cat %s/f; ./bin/hello", hello, ready2, goOn, laterPath, laterPath)
			cmd = nb.cmd(state, "run", "--", "sh", "-c", script)
			var runOut, runErr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &runOut, &runErr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			if !waitFor(20*time.Second, func() bool { _, err := os.Stat(ready2); return err == nil }) {
				t.Fatalf("the command did not start: %s", runErr.String())
			}
			time.Sleep(3 * 100 * time.Millisecond) // disk mode: let a scan see the command's cwd
			gcOut := nb.run("storefs gc during run", nb.cmd(state, "gc"))
			if !strings.HasPrefix(gcOut, "1 store paths deleted") {
				t.Errorf("gc during run: %q; want only the unused item deleted", gcOut)
			}
			if got := strings.TrimSpace(nb.run("storefs add later", nb.cmd(state, "add", laterSrc))); got != laterPath {
				t.Errorf("add during run printed %s, want %s", got, laterPath)
			}
			os.WriteFile(goOn, nil, 0o644)
			err = cmd.Wait()
			if want := fmt.Sprintf("later\nhello from ./bin/hello (0)\n"); err != nil || runOut.String() != want {
				t.Errorf("the command using an item across a gc and seeing an item added meanwhile: %v, %q, stderr %q; want %q", err, runOut.String(), runErr.String(), want)
			}
			valid := listStore(t, state)
			for _, p := range []string{sh, hello, laterPath} {
				if !slices.Contains(valid, p) {
					t.Errorf("%s is not valid after the run; valid: %q", p, valid)
				}
			}
			if slices.Contains(valid, unused) {
				t.Errorf("the unused item %s survived the gc", unused)
			}
			checkTmpEmpty(t, state)
		})
	}
}

// TestRunKill9: a SIGKILL of storefs run leaves no process of its own (the
// command's included) and no mount in any process's mountinfo.
func TestRunKill9(t *testing.T) {
	requireFUSE(t)
	t.Parallel()
	nb := newNobody(t)
	fuseForNobody(t, nb.prefix)
	for _, mode := range []string{"blob", "disk"} {
		t.Run(mode, func(t *testing.T) {
			state := filepath.Join(nb.home, "kill-"+mode)
			runItems(t, nb, state, mode)
			marker := "300." + strconv.Itoa(os.Getpid()) // unique sleep arguments
			cmd := nb.cmd(state, "run", "--", "sh", "-c", fmt.Sprintf("sleep %s & sleep %s1; wait", marker, marker))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			ours := func() []string { // live processes of this run
				var out []string
				ents, _ := os.ReadDir("/proc")
				for _, e := range ents {
					if _, err := strconv.Atoi(e.Name()); err != nil {
						continue
					}
					b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
					st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
					if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
						continue // a zombie: gone, waiting for its reaper
					}
					if c := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); strings.Contains(c, marker) || strings.Contains(c, nb.bin) {
						out = append(out, e.Name()+": "+c)
					}
				}
				return out
			}
			if !waitFor(20*time.Second, func() bool { return len(ours()) >= 5 }) { // storefs, 2 stages, sh, 2 sleeps
				cmd.Process.Kill()
				t.Fatalf("the run did not start its command: %q", ours())
			}
			t.Logf("before the kill: %q", ours())
			cmd.Process.Kill()
			cmd.Wait()
			if !waitFor(10*time.Second, func() bool { return len(ours()) == 0 }) {
				t.Errorf("processes left after kill -9 of storefs run: %q", ours())
			}
			var mounts []string
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "mountinfo"))
				if err != nil {
					continue
				}
				for _, l := range splitLines(string(b)) {
					if strings.Contains(l, state) {
						mounts = append(mounts, e.Name()+": "+l)
					}
				}
			}
			if len(mounts) > 0 {
				t.Errorf("mounts left after kill -9 of storefs run: %q", mounts)
			}
			// the dead run's scratch dir goes when the store is next opened
			nb.run("storefs ls", nb.cmd(state, "ls"))
			checkTmpEmpty(t, state)
		})
	}
}

// TestRunUnavailable: where user namespaces cannot be made (simulated with
// user.max_user_namespaces = 0 in an enclosing user namespace, as a
// sysctl would do on the host) or /dev/fuse is missing or 0600, storefs run
// fails with exit status 1 and names the cause and the setting to change.
func TestRunUnavailable(t *testing.T) {
	t.Parallel()
	nb := newNobody(t)
	state := filepath.Join(nb.home, "state")
	nb.chown()
	nb.run("storefs init", nb.cmd(state, "init"))
	run := func(what, script string, cloneflags uintptr, maps bool) (string, int) {
		t.Helper()
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = nb.env
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
		if maps {
			cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 65536}}
			cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 65536}}
			cmd.SysProcAttr.GidMappingsEnableSetgroups = true // setpriv --clear-groups
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: exit %d: %s", what, code, strings.TrimSpace(out.String()))
		return out.String(), code
	}
	runAs := func(state string) string {
		return strings.Join(append(slices.Clone(nb.prefix), nb.bin, "--state", state, "run", "--", "true"), " ")
	}
	asNobody := runAs(state)

	// A disk-mode store needs no FUSE, so the namespace is the only thing
	// missing whatever mode /dev/fuse has on this machine.
	diskState := filepath.Join(nb.home, "disk")
	nb.chown()
	nb.run("storefs init --mode disk", nb.cmd(diskState, "init", "--mode", "disk"))
	out, code := run("no user namespaces", "echo 0 > /proc/sys/user/max_user_namespaces && exec "+runAs(diskState), syscall.CLONE_NEWUSER, true)
	if code != 1 || !strings.Contains(out, "user.max_user_namespaces") || !strings.Contains(out, "sysctl -w user.max_user_namespaces=") {
		t.Errorf("storefs run without user namespaces: exit %d, %q; want 1 and the setting named", code, out)
	}
	dir := t.TempDir()
	out, code = run("no /dev/fuse", fmt.Sprintf("mount --make-rprivate / && touch %[1]s/null && mount --bind /dev/null %[1]s/null && mount -t tmpfs none /dev && touch /dev/null && mount --bind %[1]s/null /dev/null && exec %[2]s", dir, asNobody), syscall.CLONE_NEWNS, false)
	if code != 1 || !strings.Contains(out, "/dev/fuse does not exist") {
		t.Errorf("storefs run without /dev/fuse: exit %d, %q; want 1 and the cause", code, out)
	}
	out, code = run("/dev/fuse 0600", fmt.Sprintf("mount --make-rprivate / && mknod %[1]s/fuse c 10 229 && chmod 0600 %[1]s/fuse && mount --bind %[1]s/fuse /dev/fuse && exec %[2]s", dir, asNobody), syscall.CLONE_NEWNS, false)
	if code != 1 || !strings.Contains(out, "mode 0600") || !strings.Contains(out, "chmod 0666 /dev/fuse") {
		t.Errorf("storefs run with /dev/fuse 0600: exit %d, %q; want 1, the mode and the fix", code, out)
	}
	checkTmpEmpty(t, state)
	checkTmpEmpty(t, diskState)
}

// TestRunAsRoot: root runs too (with a mount namespace only), in every mode.
func TestRunAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	requireFUSE(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			state := initStore(t, mode, "/gnu/store")
			src := filepath.Join(tempDir(t), "item")
			gen{t: t, r: newRNG(3)}.file(filepath.Join(src, "f"), []byte("root\n"), false)
			p := strings.TrimSpace(string(mustStorefs(t, state, "add", src).stdout))
			r := storefs(t, state, "run", "--", "sh", "-c", "cat "+p+"/f; exit 4")
			if r.code != 4 || string(r.stdout) != "root\n" {
				t.Errorf("run as root: exit %d, %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			checkTmpEmpty(t, state)
		})
	}
}
