package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Helpers shared by several of the integration test files.

// syncBuffer is a bytes.Buffer safe for a process writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// isClosed reports whether done (a channel closed once a process has been
// waited for) is closed, without blocking.
func isClosed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// checkValidItems fails the test unless exactly want are valid in the store
// in state (storefs ls, ignoring order), `storefs verify --contents` passes,
// tmp/ is empty and, in disk mode, store/ holds exactly the valid items.
func checkValidItems(t testing.TB, state, mode string, want []string) {
	t.Helper()
	if ls := listStore(t, state); !sameSet(ls, want) {
		t.Errorf("storefs ls = %v, want %v", ls, want)
	}
	checkVerify(t, state)
	checkTmpEmpty(t, state)
	if mode == "disk" {
		var bases []string
		for _, p := range want {
			bases = append(bases, filepath.Base(p))
		}
		if got := diskStoreEntries(t, state); !sameSet(got, bases) {
			t.Errorf("store/ holds %v, want the valid items %v", got, bases)
		}
	}
}

// nobodyUser runs storefs as user nobody (uid mountNobodyUID) on stores in
// a work dir under the test's temp dir.
type nobodyUser struct {
	t      *testing.T
	prefix []string // setpriv or runuser, ending in "--"
	home   string   // the work dir: nobody's after chown
	bin    string   // a copy of storefs that nobody can run
	env    []string
}

// newNobody skips the test unless it runs as root with setpriv or runuser
// and the temp dir is reachable by other users; it makes a world-traversable
// work dir and copies the binary there (the one TestMain built sits in a
// 0700 temp dir).
func newNobody(t *testing.T) *nobodyUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run storefs as user nobody")
	}
	nb := &nobodyUser{t: t}
	if p, err := exec.LookPath("setpriv"); err == nil {
		nb.prefix = []string{p, fmt.Sprintf("--reuid=%d", mountNobodyUID), fmt.Sprintf("--regid=%d", mountNobodyUID), "--clear-groups", "--"}
	} else if p, err := exec.LookPath("runuser"); err == nil {
		nb.prefix = []string{p, "-u", "nobody", "--"}
	} else {
		t.Skip("neither setpriv nor runuser is installed: cannot run storefs as nobody")
	}
	tmp := tempDir(t)
	for _, d := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for d := filepath.Dir(filepath.Dir(tmp)); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s (above the test's temp dir) is not traversable by other users, so nobody cannot reach the store: set TMPDIR elsewhere", d)
		}
		if d == "/" {
			break
		}
	}
	nb.home = filepath.Join(tmp, "nobody")
	if err := os.MkdirAll(nb.home, 0o755); err != nil {
		t.Fatal(err)
	}
	nb.bin = filepath.Join(tmp, "storefs")
	data, err := os.ReadFile(storefsBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nb.bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	nb.env = append(storefsEnv(), "HOME="+nb.home, "XDG_DATA_HOME="+filepath.Join(nb.home, ".local/share"))
	return nb
}

// chown gives the work dir and everything in it to nobody.
func (nb *nobodyUser) chown() {
	nb.t.Helper()
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", mountNobodyUID, mountNobodyUID), nb.home).CombinedOutput(); err != nil {
		nb.t.Fatalf("chown -R nobody %s: %v: %s", nb.home, err, out)
	}
}

// cmd is storefs args... on the store in state, as nobody.
func (nb *nobodyUser) cmd(state string, args ...string) *exec.Cmd {
	full := append(slices.Clone(nb.prefix), nb.bin, "--state", state, "--no-progress")
	cmd := exec.Command(full[0], append(full[1:], args...)...)
	cmd.Env = nb.env
	return cmd
}

// run runs cmd and returns its stdout; it fails the test if cmd fails or
// outlives commandTimeout.
func (nb *nobodyUser) run(what string, cmd *exec.Cmd) string {
	nb.t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	timer := time.AfterFunc(commandTimeout, func() { cmd.Process.Kill() })
	defer timer.Stop()
	if err := cmd.Run(); err != nil {
		nb.t.Fatalf("%s (as nobody): %v\nstderr:\n%s", what, err, errb.String())
	}
	return out.String()
}
