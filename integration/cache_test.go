package integration

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cacheClosure makes c -> b -> a (and c -> a) in a fresh Nix store, a being
// a generated tree of every node kind, and returns the store URL, the paths
// (references first) and the `nix-store --export` bundle of them. Imported
// from the bundle, the items have no content address in storefs, so only a
// signature can make Nix trust them.
func cacheClosure(t *testing.T, nix *nixEnv) (url string, paths []string, bundle string) {
	t.Helper()
	url, _ = nix.newNixStore("/nix/store")
	src := generate(t, tempDir(t), []treeCase{{"cache-a", 31, mixedTree}})[0]
	a := nix.add(url, src)
	b := nix.textItem(url, "b.txt", "b refers to "+a+"\n", a)
	c := nix.textItem(url, "c.txt", "c refers to "+b+" and "+a+"\n", b, a)
	bundle = filepath.Join(tempDir(t), "closure.export")
	if err := os.WriteFile(bundle, nix.run(nil, "nix-store", "--store", url, "--export", a, b, c), 0o644); err != nil {
		t.Fatal(err)
	}
	return url, []string{a, b, c}, bundle
}

// storefsKey makes a storefs signing key and returns the secret key file
// and the public key.
func storefsKey(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	dir := tempDir(t)
	secretFile = filepath.Join(dir, "secret")
	r := mustStorefs(t, dir, "cache", "key", "generate", name)
	if err := os.WriteFile(secretFile, r.stdout, 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(secretFile)
	defer f.Close()
	r = runStorefs(t, commandTimeout, f, storefsBin, "cache", "key", "public")
	if r.code != 0 {
		t.Fatalf("storefs cache key public: exit %d: %s", r.code, r.stderr)
	}
	return secretFile, strings.TrimSpace(string(r.stdout))
}

// nixKey makes a key with nix-store --generate-binary-cache-key.
func nixKey(t *testing.T, nix *nixEnv, name string) (secretFile, public string) {
	t.Helper()
	dir := tempDir(t)
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	nix.run(nil, "nix-store", "--generate-binary-cache-key", name, sk, pk)
	b, err := os.ReadFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	return sk, strings.TrimSpace(string(b))
}

// startServe runs `storefs serve` on state and returns its URL; the
// process is stopped at cleanup.
func startServe(t *testing.T, state string, args ...string) string {
	t.Helper()
	cmd := exec.Command(storefsBin, append([]string{"--state", state, "--no-progress", "serve", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = storefsEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errb := &syncBuffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("storefs serve exited with %v on SIGTERM; stderr:\n%s", err, errb.String())
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Errorf("storefs serve did not stop on SIGTERM")
		}
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case u := <-line:
		if !strings.HasPrefix(u, "http://127.0.0.1:") {
			t.Fatalf("storefs serve printed %q; stderr:\n%s", u, errb.String())
		}
		return u
	case <-time.After(30 * time.Second):
		t.Fatalf("storefs serve did not print its URL; stderr:\n%s", errb.String())
	}
	return ""
}

// checkNixHas checks that the Nix store at url holds paths, verified, with
// the NAR hashes and references storefs (state) records.
func checkNixHas(t *testing.T, nix *nixEnv, url, state string, paths []string) {
	t.Helper()
	for i, in := range storefsInfo(t, state, paths...) {
		p := paths[i]
		if _, stderr, err := nix.try(nil, "nix-store", "--store", url, "--verify-path", p); err != nil {
			t.Errorf("nix-store --verify-path %s: %v\n%s", p, err, stderr)
		}
		if h := nix.query(url, "hash", p); len(h) != 1 || h[0] != in.NarHash {
			t.Errorf("%s: Nix has hash %v, storefs %s", p, h, in.NarHash)
		}
		if r := nix.query(url, "references", p); !sameSet(r, in.References) {
			t.Errorf("%s: Nix references %v, storefs %v", p, r, in.References)
		}
	}
}

// (1) Nix substitutes from `storefs serve`, signed with a storefs key that
// Nix trusts, in every mode and compression (and through a daemon), and
// refuses it when it trusts another key (the items have no content
// address, so the signature is all that vouches for them).
func TestCacheNixFetchesFromServe(t *testing.T) {
	nix := requireNix(t)
	_, paths, bundle := cacheClosure(t, nix)
	secret, public := storefsKey(t, "storefs-serve-1")
	_, otherPublic := storefsKey(t, "storefs-serve-1")
	for _, c := range []struct{ mode, comp string }{{"blob", "none"}, {"chunk", "xz"}, {"disk", "zstd"}, {"disk-daemon", "xz"}} {
		t.Run(c.mode+"/"+c.comp, func(t *testing.T) {
			mode, daemon := strings.CutSuffix(c.mode, "-daemon")
			state := initStore(t, mode, "/nix/store")
			mustStorefs(t, state, "import", "--bundle", bundle)
			if daemon {
				startDaemon(t, state)
			}
			u := startServe(t, state, "--sign-key", secret, "--compression", c.comp, "--priority", "30")
			dst, _ := nix.newNixStore("/nix/store")
			top := paths[2]
			_, stderr, err := nix.try(nil, "nix-store", "--store", dst, "-r", top,
				"--option", "substituters", u, "--option", "trusted-public-keys", otherPublic)
			if err == nil || !strings.Contains(stderr, "not signed by any of the keys") {
				t.Errorf("nix-store -r trusting another key: %v; want a refusal for the signature; stderr:\n%s", err, stderr)
			}
			out := nix.line("nix-store", "--store", dst, "-r", top,
				"--option", "substituters", u, "--option", "trusted-public-keys", public)
			if out != top {
				t.Errorf("nix-store -r printed %q; want %s", out, top)
			}
			checkNixHas(t, nix, dst, state, paths)
			// nix copy --from (HEAD requests for validity) works too
			dst2, _ := nix.newNixStore("/nix/store")
			nix.run(nil, "nix", "copy", "--from", u, "--to", dst2, top, "--option", "trusted-public-keys", public)
			checkNixHas(t, nix, dst2, state, paths)
		})
	}
}

// (2) storefs substitutes from caches that `nix copy --to file://` wrote
// (xz signed with a nix-store --generate-binary-cache-key key; zstd signed
// by Nix with a storefs key, served over HTTP), into blob and disk stores:
// references first, with the references and hashes Nix has.
func TestCacheSubstituteFromNixCopy(t *testing.T) {
	nix := requireNix(t)
	url, paths, _ := cacheClosure(t, nix)
	nixSecret, nixPublic := nixKey(t, nix, "nix-cache-1")
	sfSecret, sfPublic := storefsKey(t, "storefs-cache-1")
	top := paths[2]
	xzDir, zstdDir := tempDir(t), tempDir(t)
	nix.run(nil, "nix", "copy", "--from", url, "--to", "file://"+xzDir+"?compression=xz&secret-key="+nixSecret, top)
	nix.run(nil, "nix", "copy", "--from", url, "--to", "file://"+zstdDir+"?compression=zstd&secret-key="+sfSecret, top)
	httpSrv := httptest.NewServer(http.FileServer(http.Dir(zstdDir)))
	defer httpSrv.Close()
	for _, mode := range []string{"blob", "disk"} {
		for _, c := range []struct{ name, from, key string }{{"xz", "file://" + xzDir, nixPublic}, {"zstd-http", httpSrv.URL, sfPublic}} {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				state := initStore(t, mode, "/nix/store")
				r := storefs(t, state, "substitute", "--from", c.from, "--trusted-key", sfPublic, "--trusted-key", nixPublic+"x", top)
				if c.name == "xz" && (r.code != 2 || !strings.Contains(r.stderr, "bad public key")) {
					t.Errorf("substitute with a corrupt key: exit %d, %s", r.code, r.stderr)
				}
				if c.name == "zstd-http" {
					// wrong key only: refused, store untouched
					r = storefs(t, state, "substitute", "--from", c.from, "--trusted-key", nixPublic, top)
					if r.code != 1 || !strings.Contains(r.stderr, "no valid signature") {
						t.Errorf("substitute trusting another key: exit %d, %s", r.code, r.stderr)
					}
					if ls := listStore(t, state); len(ls) != 0 {
						t.Errorf("store after a refusal: %v", ls)
					}
				}
				got := mustStorefs(t, state, "substitute", "--from", c.from, "--trusted-key", c.key, top).lines()
				if !slices.Equal(got, paths) {
					t.Errorf("substitute printed %v; want %v (references first)", got, paths)
				}
				for i, in := range storefsInfo(t, state, paths...) {
					p := paths[i]
					if want := nix.query(url, "references", p); !sameSet(in.References, want) {
						t.Errorf("%s: references %v; nix-store -q --references %v", p, in.References, want)
					}
					if want := nix.query(url, "hash", p)[0]; in.NarHash != want {
						t.Errorf("%s: hash %s; Nix %s", p, in.NarHash, want)
					}
				}
				checkVerify(t, state)
				checkTmpEmpty(t, state)
			})
		}
	}
}

// (3) What `storefs copy --to file://` writes, Nix reads (nix copy --from,
// trusting the storefs key; and a nix-store --generate-binary-cache-key key
// used by storefs copy).
func TestCacheNixReadsCopy(t *testing.T) {
	nix := requireNix(t)
	_, paths, bundle := cacheClosure(t, nix)
	sfSecret, sfPublic := storefsKey(t, "storefs-copy-1")
	nixSecret, nixPublic := nixKey(t, nix, "nix-copy-1")
	top := paths[2]
	for _, c := range []struct{ mode, comp, secret, public string }{
		{"chunk", "xz", sfSecret, sfPublic}, {"disk", "zstd", nixSecret, nixPublic}, {"blob", "none", sfSecret, sfPublic},
	} {
		t.Run(c.mode+"/"+c.comp, func(t *testing.T) {
			state := initStore(t, c.mode, "/nix/store")
			mustStorefs(t, state, "import", "--bundle", bundle)
			dir := tempDir(t)
			got := mustStorefs(t, state, "copy", "--to", "file://"+dir, "--compression", c.comp, "--sign-key", c.secret, top).lines()
			if !slices.Equal(got, paths) {
				t.Errorf("copy printed %v; want %v", got, paths)
			}
			dst, _ := nix.newNixStore("/nix/store")
			nix.run(nil, "nix", "copy", "--from", "file://"+dir, "--to", dst, top, "--option", "trusted-public-keys", c.public)
			checkNixHas(t, nix, dst, state, paths)
			if _, stderr, err := nix.try(nil, "nix", "store", "verify", "--store", "file://"+dir, "-r", top, "--option", "trusted-public-keys", c.public); err != nil {
				t.Errorf("nix store verify of the cache: %v\n%s", err, stderr)
			}
		})
	}
}
