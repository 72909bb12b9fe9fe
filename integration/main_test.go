package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// update regenerates testdata/golden.json with the real Nix:
//
//	go test ./integration/ -run TestGolden -update
var update = flag.Bool("update", false, "regenerate testdata/golden.json with the real nix-store and nix-hash")

// storefsBin is the storefs binary built by TestMain (without -race, whatever
// flags the test binary itself was built with).
var storefsBin string

// modes are the store modes every user-level test runs in.
var modes = []string{"blob", "disk", "chunk"}

// storeDirs are the logical store dirs the path tests cover.
var storeDirs = []string{"/gnu/store", "/nix/store"}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "storefs-integration-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	storefsBin = filepath.Join(dir, "storefs")
	start := time.Now()
	gobin := "go"
	if p, err := exec.LookPath("go"); err == nil {
		gobin = p
	} else if root := os.Getenv("GOROOT"); root != "" {
		gobin = filepath.Join(root, "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", storefsBin, "github.com/storefs/storefs/cmd/storefs")
	cmd.Env = buildEnv()
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: building storefs: %v\n", err)
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "integration: built %s in %v\n", storefsBin, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

// buildEnv is the environment for `go build`: GOFLAGS without -race, so that
// the binary under test is an ordinary build.
func buildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if v, ok := strings.CutPrefix(kv, "GOFLAGS="); ok {
			var keep []string
			for _, f := range strings.Fields(v) {
				if f != "-race" && f != "--race" && f != "-race=true" {
					keep = append(keep, f)
				}
			}
			kv = "GOFLAGS=" + strings.Join(keep, " ")
		}
		env = append(env, kv)
	}
	return env
}

// commandTimeout bounds every child process, so that a hang fails a test
// instead of the whole run.
const commandTimeout = 2 * time.Minute

// result is what a finished command left.
type result struct {
	stdout []byte
	stderr string
	code   int
}

func (r result) lines() []string { return splitLines(string(r.stdout)) }

func splitLines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// storefsEnv is the environment of storefs processes: no STOREFS_STATE
// (every call passes --state).
func storefsEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STOREFS_") {
			env = append(env, kv)
		}
	}
	return env
}

// storefsCmd is an unstarted storefs process on the store in state.
func storefsCmd(ctx context.Context, state string, args ...string) *exec.Cmd {
	full := append([]string{"--state", state, "--no-progress"}, args...)
	cmd := exec.CommandContext(ctx, storefsBin, full...)
	cmd.Env = storefsEnv()
	return cmd
}

// storefs runs storefs on the store in state and returns what it did; it
// fails the test when the binary could not be run at all or hung.
func storefs(t testing.TB, state string, args ...string) result {
	t.Helper()
	return runStorefs(t, commandTimeout, nil, append([]string{storefsBin, "--state", state, "--no-progress"}, args...)...)
}

// runStorefs runs a command line (argv, e.g. the storefs binary and its
// arguments, possibly behind setpriv) with stdin, and returns what it did; a
// command still running after timeout is killed and fails the test.
func runStorefs(t testing.TB, timeout time.Duration, stdin io.Reader, argv ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = storefsEnv()
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.Bytes(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Errorf("%s: still running after %v (hung?); killed. stderr:\n%s", strings.Join(argv, " "), timeout, errb.String())
		r.code = -1
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("%s: %v (stderr: %s)", strings.Join(argv, " "), err, errb.String())
	}
	return r
}

// mustStorefs runs storefs and fails the test unless it exits 0.
func mustStorefs(t testing.TB, state string, args ...string) result {
	t.Helper()
	r := storefs(t, state, args...)
	if r.code != 0 {
		t.Fatalf("storefs %s: exit %d, stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// initStore creates a store of the given mode and store dir in a temp dir
// and returns its state dir.
func initStore(t testing.TB, mode, storeDir string) string {
	t.Helper()
	state := filepath.Join(tempDir(t), "state")
	mustStorefs(t, state, "init", "--mode", mode, "--store-dir", storeDir)
	return state
}

// info is `storefs info --json` of one path.
type info struct {
	Path             string   `json:"path"`
	NarHash          string   `json:"narHash"`
	NarSize          int64    `json:"narSize"`
	References       []string `json:"references"`
	Referrers        []string `json:"referrers"`
	Deriver          string   `json:"deriver"`
	RegistrationTime string   `json:"registrationTime"`
	CA               string   `json:"ca"`
}

func storefsInfo(t testing.TB, state string, paths ...string) []info {
	t.Helper()
	r := mustStorefs(t, state, append([]string{"info", "--json"}, paths...)...)
	var out []info
	if err := json.Unmarshal(r.stdout, &out); err != nil {
		t.Fatalf("storefs info --json: %v in %q", err, r.stdout)
	}
	if len(out) != len(paths) {
		t.Fatalf("storefs info --json %v: %d objects", paths, len(out))
	}
	return out
}

// checkVerify runs `storefs verify --contents` and fails the test unless it
// exits 0 with no problems.
func checkVerify(t testing.TB, state string) {
	t.Helper()
	r := storefs(t, state, "verify", "--contents")
	if r.code != 0 {
		t.Errorf("storefs verify --contents: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

// checkTmpEmpty fails the test when the state's tmp/ holds anything: every
// storefs process removes its staging dir when it ends, and leftovers of dead
// processes are removed when a store is opened.
func checkTmpEmpty(t testing.TB, state string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(state, "tmp"))
	if err != nil {
		t.Errorf("reading tmp/: %v", err)
		return
	}
	if len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s/tmp is not empty: %v", state, names)
	}
}

// listStore is `storefs ls`.
func listStore(t testing.TB, state string) []string {
	t.Helper()
	return mustStorefs(t, state, "ls").lines()
}

// diskStoreEntries lists <state>/store (disk mode) without .links.
func diskStoreEntries(t testing.TB, state string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(state, "store"))
	if err != nil {
		t.Fatalf("reading store/: %v", err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != ".links" {
			out = append(out, e.Name())
		}
	}
	return out
}

// filesUnder lists the non-directories below dir (relative paths, sorted);
// a missing dir is empty.
func filesUnder(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", dir, err)
	}
	return out
}

// tempDir is t.TempDir whose contents are made writable before removal
// (store items and Nix stores have read-only directories, which a non-root
// RemoveAll cannot empty).
func tempDir(t testing.TB) string {
	d := t.TempDir()
	t.Cleanup(func() { makeWritable(d) })
	return d
}

func makeWritable(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

// sameSet reports whether a and b hold the same strings, ignoring order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// firstDiff describes where two byte strings differ.
func firstDiff(got, want []byte) string {
	n := min(len(got), len(want))
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d of %d (got %d bytes)", i, len(want), len(got))
		}
	}
	return fmt.Sprintf("lengths differ: got %d bytes, want %d", len(got), len(want))
}
