package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// nixConfig is the NIX_CONFIG of every Nix command the tests run: no
// substituters (there is no network; Nix would retry cache.nixos.org), no
// sandbox, no build users, and the nix-command CLI.
const nixConfig = `substituters =
sandbox = false
build-users-group =
experimental-features = nix-command
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
warn-dirty = false`

// nixEnv runs the real Nix 2.x commands in an isolated environment: HOME,
// the XDG dirs and NIX_CONF_DIR in a temp dir, NIX_CONFIG above, no NIX_*
// variable of the caller. Stores are always given as --store URLs of
// throw-away stores (see storeURL), never the real /nix/store.
type nixEnv struct {
	t   testing.TB
	env []string
}

// requireNix skips the test when nix-store is not installed, and returns an
// isolated Nix environment otherwise.
func requireNix(t testing.TB) *nixEnv {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed: these comparisons need the real Nix (apt-get install nix-bin): " + err.Error())
	}
	for _, c := range []string{"nix-hash", "nix-instantiate"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not installed (nix-store is): %v", c, err)
		}
	}
	return newNixEnv(t)
}

func newNixEnv(t testing.TB) *nixEnv {
	home := tempDir(t)
	for _, d := range []string{".cache", ".config", ".local/share", "etc-nix"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NIX_") || strings.HasPrefix(k, "XDG_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"NIX_CONFIG="+nixConfig,
		"NIX_CONF_DIR="+filepath.Join(home, "etc-nix"), // no /etc/nix/nix.conf
		"HOME="+home,
		"XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"XDG_DATA_HOME="+filepath.Join(home, ".local/share"),
		"LC_ALL=C",
	)
	return &nixEnv{t: t, env: env}
}

// storeURL is the URL of a throw-away local Nix store whose logical store dir
// is storeDir (/gnu/store or /nix/store) and whose files live under root.
func storeURL(root, storeDir string) string {
	return fmt.Sprintf("local?store=%s&real=%s/store&state=%s/state&log=%s/log", storeDir, root, root, root)
}

// newNixStore makes a fresh throw-away store and returns its URL and the
// real directory its items live in.
func (n *nixEnv) newNixStore(storeDir string) (url, real string) {
	root := tempDir(n.t)
	return storeURL(root, storeDir), filepath.Join(root, "store")
}

// run runs a Nix command and returns its stdout; it fails the test unless
// the command exits 0.
func (n *nixEnv) run(stdin []byte, name string, args ...string) []byte {
	n.t.Helper()
	out, stderr, err := n.try(stdin, name, args...)
	if err != nil {
		n.t.Fatalf("%s %s: %v\nstderr:\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

// line is run for commands that print one line.
func (n *nixEnv) line(name string, args ...string) string {
	n.t.Helper()
	return strings.TrimSpace(string(n.run(nil, name, args...)))
}

func (n *nixEnv) try(stdin []byte, name string, args ...string) (stdout []byte, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = n.env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

// narHash32 is `nix-hash --type sha256 --base32 PATH`: the nix32 sha256 of
// PATH's NAR.
func (n *nixEnv) narHash32(path string) string {
	n.t.Helper()
	return n.line("nix-hash", "--type", "sha256", "--base32", path)
}

// narHash16 is `nix-hash --type sha256 PATH` (hex).
func (n *nixEnv) narHash16(path string) string {
	n.t.Helper()
	return n.line("nix-hash", "--type", "sha256", path)
}

// dump is `nix-store --dump PATH`.
func (n *nixEnv) dump(path string) []byte {
	n.t.Helper()
	return n.run(nil, "nix-store", "--dump", path)
}

// fixedPath is `nix-store --print-fixed-path --recursive sha256 HASH NAME`
// in the store at url: the path of a recursive sha256 item, computed only.
func (n *nixEnv) fixedPath(url, hash32, name string) string {
	n.t.Helper()
	return n.line("nix-store", "--store", url, "--print-fixed-path", "--recursive", "sha256", hash32, name)
}

// add is `nix-store --add SRC` into the store at url.
func (n *nixEnv) add(url, src string) string {
	n.t.Helper()
	return n.line("nix-store", "--store", url, "--add", src)
}

// query is `nix-store -q --FLAG PATH` (one query type per call in Nix 2.8).
func (n *nixEnv) query(url, flag, path string) []string {
	n.t.Helper()
	return splitLines(string(n.run(nil, "nix-store", "--store", url, "-q", "--"+flag, path)))
}

// version is `nix-store --version`.
func (n *nixEnv) version() string {
	n.t.Helper()
	return n.line("nix-store", "--version")
}
