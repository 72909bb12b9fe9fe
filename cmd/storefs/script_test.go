package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/storefs/storefs/nsrun"
)

// TestMain makes the test binary double as the storefs command: scripts
// run it as `storefs ...` (a real process, so exit codes, stdin and the
// environment are the real ones).
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"storefs": func() {
			if nsrun.IsStage() {
				os.Exit(nsrun.Stage())
			}
			if os.Getenv("STOREFS_TEST_DAEMON") == "1" {
				ensureDaemon(os.Args[1:])
			}
			os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
		},
	})
}

// ensureDaemon, in the daemon variant of the scripts, starts `storefs
// daemon` for $STOREFS_STATE before a command that would use the store, as
// soon as the store exists, so that the same scripts run through a daemon.
// The daemon's pid goes to $WORK/.daemons; the script's cleanup stops it.
func ensureDaemon(args []string) {
	if len(args) == 0 {
		return
	}
	for _, a := range args {
		switch a {
		case "init", "demo", "daemon", "help", "--help", "-h", "--no-daemon":
			return
		}
		if strings.HasPrefix(a, "--state") {
			return // a script naming another state dir means it: no daemon there
		}
	}
	state := os.Getenv("STOREFS_STATE")
	if _, err := os.Stat(filepath.Join(state, "registry.db")); err != nil {
		return
	}
	sock := filepath.Join(state, "daemon.sock")
	if _, err := os.Stat(sock); err == nil {
		return
	}
	cmd := exec.Command(os.Args[0], "daemon")
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "test: starting a daemon: %v\n", err)
		os.Exit(99)
	}
	f, err := os.OpenFile(filepath.Join(os.Getenv("WORK"), ".daemons"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err == nil {
		fmt.Fprintf(f, "%d\n", cmd.Process.Pid)
		f.Close()
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return
		}
	}
	fmt.Fprintf(os.Stderr, "test: the daemon did not come up\n")
	os.Exit(99)
}

// stopDaemons sends SIGTERM to the daemons a script started and waits for
// them to exit; a daemon that does not exit in time fails the script.
func stopDaemons(work string) error {
	b, err := os.ReadFile(filepath.Join(work, ".daemons"))
	if err != nil {
		return nil
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		if pid <= 0 || syscall.Kill(pid, syscall.SIGTERM) != nil {
			continue
		}
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				return fmt.Errorf("daemon %d did not stop on SIGTERM", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// TestScripts runs every testdata/script/*.txtar once per store mode. A script
// sees $MODE (blob or disk), the conditions [blob] and [disk], and
// $STOREFS_STATE=$WORK/state (not yet initialised).
//
// Every script also runs through a daemon (the variants blob-daemon and
// disk-daemon): each storefs command that uses an existing store then goes
// through a `storefs daemon` started for it, and must give the same output
// and exit status. The condition [daemon] marks the few lines that differ
// by nature (a registry lock taken by the script, say).
func TestScripts(t *testing.T) {
	for _, variant := range []string{"blob", "disk", "blob-daemon", "disk-daemon"} {
		mode, withDaemon := strings.CutSuffix(variant, "-daemon")
		t.Run(variant, func(t *testing.T) {
			t.Parallel()
			testscript.Run(t, testscript.Params{
				Dir:                "testdata/script",
				RequireUniqueNames: true,
				Setup: func(e *testscript.Env) error {
					e.Setenv("STOREFS_STATE", filepath.Join(e.WorkDir, "state"))
					e.Setenv("MODE", mode)
					if withDaemon {
						e.Setenv("STOREFS_TEST_DAEMON", "1")
						e.Defer(func() {
							if err := stopDaemons(e.WorkDir); err != nil {
								e.T().Fatal(err)
							}
						})
					}
					return nil
				},
				Condition: func(cond string) (bool, error) {
					switch cond {
					case "blob", "disk":
						return cond == mode, nil
					case "daemon":
						return withDaemon, nil
					}
					return false, fmt.Errorf("unknown condition %q", cond)
				},
				Cmds: scriptCmds,
			})
		})
	}
}

// scriptCmds are the commands scripts get besides testscript's own:
//
//	status [-within D] CODE PROG [ARGS...]  run PROG, require exit status CODE
//	mkfifo PATH                             make a named pipe
//	truncate FILE SIZE                      cut FILE to SIZE bytes (negative: drop from the end)
//	concat DST SRC...                       DST = the SRC files (or stdout) one after another
//	patch FILE OFFSET HEX                   overwrite bytes of FILE
//	files DIR                               list everything below DIR, sorted (dirs end in /)
//	flock [-s] FILE / unflock FILE          hold an flock(2) on FILE in the test process
//
// Scripts named bug_*.txtar assert the right behaviour for a known bug and
// start with `skip 'BUG: ...'`; delete that line once the bug is fixed.
var scriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	"status":   cmdStatus,
	"mkfifo":   cmdMkfifo,
	"truncate": cmdTruncate,
	"concat":   cmdConcat,
	"patch":    cmdPatch,
	"files":    cmdFiles,
	"flock":    cmdFlock,
	"unflock":  cmdUnflock,
}

// status [-within DURATION] CODE PROG [ARGS...]
//
// Runs PROG like exec and requires exit status CODE (and, with -within, that
// it ends within DURATION). stdout and stderr are kept for the next
// stdout/stderr/cmp commands.
func cmdStatus(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! status")
	}
	var within time.Duration
	if len(args) > 0 && args[0] == "-within" {
		if len(args) < 2 {
			ts.Fatalf("usage: status [-within DURATION] CODE PROG [ARGS...]")
		}
		d, err := time.ParseDuration(args[1])
		ts.Check(err)
		within, args = d, args[2:]
	}
	if len(args) < 2 {
		ts.Fatalf("usage: status [-within DURATION] CODE PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	start := time.Now()
	err = ts.Exec(args[1], args[2:]...)
	took := time.Since(start)
	got := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("%s: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
	if within > 0 && took > within {
		ts.Fatalf("%s took %v, want at most %v", args[1], took.Round(time.Millisecond), within)
	}
}

// mkfifo PATH
func cmdMkfifo(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: mkfifo PATH")
	}
	ts.Check(syscall.Mkfifo(ts.MkAbs(args[0]), 0o644))
}

// truncate FILE SIZE: cut (or extend with zeros) FILE to SIZE bytes; a
// negative SIZE removes that many bytes from the end.
func cmdTruncate(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: truncate FILE SIZE")
	}
	p := ts.MkAbs(args[0])
	n, err := strconv.ParseInt(args[1], 10, 64)
	ts.Check(err)
	if n < 0 {
		st, err := os.Stat(p)
		ts.Check(err)
		n += st.Size()
		if n < 0 {
			ts.Fatalf("truncate: %s has only %d bytes", args[0], st.Size())
		}
	}
	ts.Check(os.Truncate(p, n))
}

// concat DST SRC...: write the concatenation of the SRC files (or "stdout")
// to DST.
func cmdConcat(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: concat DST SRC...")
	}
	var b strings.Builder
	for _, src := range args[1:] {
		b.WriteString(ts.ReadFile(src))
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(b.String()), 0o666))
}

// patch FILE OFFSET HEX: overwrite the bytes of FILE at OFFSET with HEX.
func cmdPatch(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: patch FILE OFFSET HEX")
	}
	off, err := strconv.ParseInt(args[1], 10, 64)
	ts.Check(err)
	b, err := hex.DecodeString(args[2])
	ts.Check(err)
	f, err := os.OpenFile(ts.MkAbs(args[0]), os.O_WRONLY, 0)
	ts.Check(err)
	_, err = f.WriteAt(b, off)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	ts.Check(err)
}

// files DIR: print every path below DIR (relative, sorted, one a line;
// directories end in "/"). Prints nothing for an empty directory.
func cmdFiles(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: files DIR")
	}
	root := ts.MkAbs(args[0])
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			rel += "/"
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	ts.Check(err)
	sort.Strings(out)
	w := ts.Stdout() // even an empty listing replaces the previous stdout
	for _, l := range out {
		fmt.Fprintln(w, l)
	}
}

// Locks held by flock, by absolute path, released by unflock or at the end
// of the script.
var (
	locksMu sync.Mutex
	locks   = map[string]*os.File{}
)

// flock [-s] FILE: take an exclusive (with -s, shared) flock(2) on FILE, as
// bbolt does on the registry for a write (read) transaction, in the test
// process, until unflock FILE or the end of the script.
func cmdFlock(ts *testscript.TestScript, neg bool, args []string) {
	how := syscall.LOCK_EX
	if len(args) == 2 && args[0] == "-s" {
		how, args = syscall.LOCK_SH, args[1:]
	}
	if neg || len(args) != 1 {
		ts.Fatalf("usage: flock [-s] FILE")
	}
	p := ts.MkAbs(args[0])
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	ts.Check(err)
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		ts.Fatalf("flock %s: %v", args[0], err)
	}
	locksMu.Lock()
	if old := locks[p]; old != nil {
		old.Close()
	}
	locks[p] = f
	locksMu.Unlock()
	ts.Defer(func() { unlock(p) })
}

// unflock FILE: release a lock taken by flock.
func cmdUnflock(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: unflock FILE")
	}
	if !unlock(ts.MkAbs(args[0])) {
		ts.Fatalf("unflock %s: not locked by flock", args[0])
	}
}

func unlock(p string) bool {
	locksMu.Lock()
	defer locksMu.Unlock()
	f, ok := locks[p]
	if ok {
		f.Close() // releases the flock
		delete(locks, p)
	}
	return ok
}
