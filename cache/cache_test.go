package cache_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/storefs/storefs/cache"
	"github.com/storefs/storefs/store"
)

// The oracle's signed narinfo (shared/oracles/expected-fixture.txt, made by
// nix copy with make-test-key storefs-test-1 fixture): the same key must
// give the same (deterministic) signature, and its public key must verify it.
func TestSignatureMatchesNix(t *testing.T) {
	seed := sha256.Sum256([]byte("storefs-test-key:fixture"))
	priv := ed25519.NewKeyFromSeed(seed[:])
	sk, err := cache.LoadSecretKey("storefs-test-1:" + base64.StdEncoding.EncodeToString(priv))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sk.ToPublicKey().String(), "storefs-test-1:sHIdiW+dsAST3DGXYc3Q1l9YKemypK/UATePF6qSh1c="; got != want {
		t.Fatalf("public key = %s; want %s", got, want)
	}
	text := `StorePath: /gnu/store/3r2qf4l21625zzkrgzq6m276s3c1vgxq-fx
URL: nar/0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm.nar
Compression: none
FileHash: sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm
FileSize: 4416
NarHash: sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm
NarSize: 4416
References: 
Sig: storefs-test-1:xMlK9RkrYaHDgOpodKjXXANimk6COvdRau/2RWUkzI2oALek2MmGnaVJy9ksSgu4rYICxEulsQCnYaiYlb2vDg==
`
	ni, err := cache.ParseNarInfo(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if ni.String() != text {
		t.Errorf("narinfo printed back differs:\n%s\nwant:\n%s", ni.String(), text)
	}
	pk := sk.ToPublicKey()
	if !cache.Verified("/gnu/store", ni, []signature.PublicKey{pk}) {
		t.Errorf("Nix's signature does not verify")
	}
	want := ni.Signatures[0].String()
	ni.Signatures = nil
	if err := cache.Sign("/gnu/store", ni, sk); err != nil {
		t.Fatal(err)
	}
	if got := ni.Signatures[0].String(); got != want {
		t.Errorf("Sign = %s; want Nix's %s", got, want)
	}
	tampered := *ni
	tampered.NarSize++
	if cache.Verified("/gnu/store", &tampered, []signature.PublicKey{pk}) {
		t.Errorf("a signature verified for another NarSize")
	}
	other, _, _ := cache.GenerateKey("storefs-test-1")
	osk, _ := cache.LoadSecretKey(other)
	if cache.Verified("/gnu/store", ni, []signature.PublicKey{osk.ToPublicKey()}) {
		t.Errorf("a signature verified with another key of the same name")
	}
}

// With /nix/store, Fingerprint is go-nix's (which assumes it), references
// sorted as full paths whatever their order in the narinfo.
func TestFingerprint(t *testing.T) {
	ni, err := cache.ParseNarInfo(strings.NewReader(`StorePath: /nix/store/app00000000000000000000000000000-app
URL: nar/x.nar
NarHash: sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm
NarSize: 12
References: app00000000000000000000000000000-app 1ib00000000000000000000000000000-lib
System: x86_64-linux
Signature: 1;guix;ignored
`))
	if err != nil {
		t.Fatal(err)
	}
	want := "1;/nix/store/app00000000000000000000000000000-app;sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm;12;" +
		"/nix/store/1ib00000000000000000000000000000-lib,/nix/store/app00000000000000000000000000000-app"
	if got := cache.Fingerprint("/nix/store", ni); got != want {
		t.Errorf("Fingerprint = %q; want %q", got, want)
	}
	sorted := *ni
	sorted.References = slices.Sorted(slices.Values(ni.References))
	if got := (narinfo.NarInfo(sorted)).Fingerprint(); got != want {
		t.Errorf("go-nix Fingerprint = %q; want %q", got, want)
	}
	if ni.Compression != "bzip2" {
		t.Errorf("Compression = %q; want bzip2 (Nix's meaning of none given)", ni.Compression)
	}
}

func TestParseNarInfoRefuses(t *testing.T) {
	good := "StorePath: /nix/store/app00000000000000000000000000000-app\nURL: nar/x.nar\nNarHash: sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm\nNarSize: 12\nReferences: \n"
	for _, c := range []struct{ name, text, want string }{
		{"no StorePath", strings.Replace(good, "StorePath: /nix/store/app00000000000000000000000000000-app\n", "", 1), "no StorePath"},
		{"no URL", strings.Replace(good, "URL: nar/x.nar\n", "", 1), "no URL"},
		{"no NarHash", strings.Replace(good, "NarHash: sha256:0gb9gq4hv8dfn5cchsbg4irx4g0gsqvz6jxwj6vs741j1qg7i4hm\n", "", 1), "no NarHash"},
		{"NarSize 0", strings.Replace(good, "NarSize: 12", "NarSize: 0", 1), "NarSize is 0"},
		{"two References", good + "References: \n", "more than one References"},
		{"bad path", strings.Replace(good, "app0000", "APP0000", 1), "invalid StorePath"},
		{"bad reference", strings.Replace(good, "References: ", "References: nonsense", 1), "Reference"},
		{"none but sizes differ", good + "Compression: none\nFileSize: 13\n", "FileSize/NarSize"},
	} {
		if _, err := cache.ParseNarInfo(strings.NewReader(c.text)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseNarInfo(%s) = %v; want an error containing %q", c.name, err, c.want)
		}
	}
}

func TestKeys(t *testing.T) {
	secret, public, err := cache.GenerateKey("cache.example.org-1")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := cache.LoadSecretKey(secret + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if sk.ToPublicKey().String() != public || !strings.HasPrefix(public, "cache.example.org-1:") {
		t.Errorf("public key %s, from the secret %s", public, sk.ToPublicKey())
	}
	if _, err := cache.ParsePublicKey(public); err != nil {
		t.Errorf("ParsePublicKey(%s): %v", public, err)
	}
	for _, bad := range []string{"", "a:b", "x:" + base64.StdEncoding.EncodeToString(make([]byte, 31)), public + "AAAA"} {
		if _, err := cache.ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) succeeded", bad)
		}
	}
	if _, err := cache.LoadSecretKey(public); err == nil {
		t.Errorf("LoadSecretKey(a public key) succeeded")
	}
	if _, _, err := cache.GenerateKey("a:b"); err == nil {
		t.Errorf("GenerateKey(a:b) succeeded")
	}
}

func newKey(t *testing.T) (signature.SecretKey, signature.PublicKey) {
	secret, _, err := cache.GenerateKey("test-1")
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := cache.LoadSecretKey(secret)
	return sk, sk.ToPublicKey()
}

// serve starts a Handler over s.
func serve(t *testing.T, s *store.Store, comp string, sk *signature.SecretKey) *httptest.Server {
	h, err := cache.NewHandler(s, cache.HandlerOptions{StoreDir: storeDir, Compression: comp, SignKey: sk, CacheDir: t.TempDir(), Priority: 40})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func substituter(t *testing.T, url string, pk signature.PublicKey, tweak func(*cache.SubstituteOptions)) *cache.Substituter {
	o := cache.SubstituteOptions{URL: url, StoreDir: storeDir, TrustedKeys: []signature.PublicKey{pk},
		Backoff: 1e6, StallTimeout: 2e9, SpoolDir: t.TempDir()}
	if tweak != nil {
		tweak(&o)
	}
	sub, err := cache.NewSubstituter(o)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

// A store served by Handler is substituted by Substituter into a fresh
// store of every mode, with every compression, references first and with
// references and deriver kept.
func TestServeSubstitute(t *testing.T) {
	ctx := context.Background()
	src := newStore(t, store.ModeChunk)
	dep, lib, app := closure(t, src)
	sk, pk := newKey(t)
	for _, comp := range cache.Compressions {
		srv := serve(t, src, comp, &sk)
		for _, mode := range modes {
			t.Run(comp+"/"+string(mode), func(t *testing.T) {
				dst := newStore(t, mode)
				got, err := substituter(t, srv.URL, pk, nil).Substitute(ctx, dst, []string{app})
				if err != nil {
					t.Fatal(err)
				}
				if want := []string{dep, lib, app}; !slices.Equal(got, want) {
					t.Errorf("Substitute = %v; want %v (references first)", got, want)
				}
				sameItems(t, src, dst, dep, lib, app)
				again, err := substituter(t, srv.URL, pk, nil).Substitute(ctx, dst, []string{app, lib})
				if err != nil || len(again) != 0 {
					t.Errorf("Substitute again = %v, %v; want nothing to do", again, err)
				}
			})
		}
	}
}

func TestHandlerHTTP(t *testing.T) {
	src := newStore(t, store.ModeBlob)
	_, _, app := closure(t, src)
	srv := serve(t, src, "xz", nil)
	get := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("GET", "/nix-cache-info"); code != 200 || body != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n" {
		t.Errorf("GET /nix-cache-info = %d %q", code, body)
	}
	hash := filepath.Base(app)[:32]
	code, body := get("GET", "/"+hash+".narinfo")
	ni, err := cache.ParseNarInfo(strings.NewReader(body))
	if code != 200 || err != nil || ni.StorePath != app || ni.Compression != "xz" || len(ni.Signatures) != 0 {
		t.Fatalf("GET narinfo = %d %q (%v)", code, body, err)
	}
	if code, body := get("HEAD", "/"+hash+".narinfo"); code != 200 || body != "" {
		t.Errorf("HEAD narinfo = %d %q; want 200 and no body", code, body)
	}
	if code, _ := get("HEAD", "/"+ni.URL); code != 200 {
		t.Errorf("HEAD nar = %d", code)
	}
	missing := strings.Repeat("0", 32)
	for _, p := range []string{"/" + missing + ".narinfo", "/nar/" + missing + "-" + strings.Repeat("1", 52) + ".nar.xz", "/" + hash + ".ls", "/nar/" + hash + "-" + strings.Repeat("1", 52) + ".nar.xz", "/" + strings.Replace(ni.URL, ".xz", ".zst", 1), "/x/../" + hash + ".narinfo.foo"} {
		if code, _ := get("GET", p); code != 404 {
			t.Errorf("GET %s = %d; want 404", p, code)
		}
	}
	if code, _ := get("HEAD", "/"+missing+".narinfo"); code != 404 {
		t.Errorf("HEAD missing narinfo = %d; want 404", code)
	}
	if code, _ := get("POST", "/nix-cache-info"); code != 405 {
		t.Errorf("POST = %d; want 405", code)
	}
	// Concurrent clients of one NAR share one compression and get the same bytes.
	var wg sync.WaitGroup
	sums := make([]string, 8)
	for i := range sums {
		wg.Go(func() {
			_, b := get("GET", "/"+ni.URL)
			sums[i] = fmt.Sprintf("%x %d", sha256.Sum256([]byte(b)), len(b))
		})
	}
	wg.Wait()
	want := fmt.Sprintf("%x %d", ni.FileHash.Digest(), ni.FileSize)
	for i, s := range sums {
		if s != want {
			t.Errorf("client %d got %s; want %s (FileHash, FileSize)", i, s, want)
		}
	}
}

// A static cache written by WriteDir substitutes like a served one, and a
// second WriteDir leaves present items alone.
func TestWriteDir(t *testing.T) {
	ctx := context.Background()
	src := newStore(t, store.ModeDisk)
	dep, lib, app := closure(t, src)
	sk, pk := newKey(t)
	dir := t.TempDir()
	written, err := cache.WriteDir(ctx, src, dir, []string{lib}, cache.WriteOptions{StoreDir: storeDir, Compression: "zstd", SignKey: &sk})
	if err != nil || !slices.Equal(written, []string{dep, lib}) {
		t.Fatalf("WriteDir(lib) = %v, %v; want [dep lib]", written, err)
	}
	written, err = cache.WriteDir(ctx, src, dir, []string{app}, cache.WriteOptions{StoreDir: storeDir, SignKey: &sk})
	if err != nil || !slices.Equal(written, []string{app}) {
		t.Fatalf("WriteDir(app) = %v, %v; want [app]", written, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "nix-cache-info")); string(b) != "StoreDir: /nix/store\n" {
		t.Errorf("nix-cache-info = %q", b)
	}
	if _, err := cache.WriteDir(ctx, src, dir, []string{app}, cache.WriteOptions{StoreDir: "/gnu/store"}); err == nil {
		t.Errorf("WriteDir into a cache of another store dir succeeded")
	}
	b, _ := os.ReadFile(filepath.Join(dir, filepath.Base(app)[:32]+".narinfo"))
	ni, err := cache.ParseNarInfo(strings.NewReader(string(b)))
	if err != nil || ni.Compression != "xz" || !strings.HasSuffix(ni.URL, ".nar.xz") {
		t.Errorf("app's narinfo: %v %q", err, b)
	}
	dst := newStore(t, store.ModeBlob)
	got, err := substituter(t, "file://"+dir, pk, nil).Substitute(ctx, dst, []string{app})
	if err != nil || !slices.Equal(got, []string{dep, lib, app}) {
		t.Fatalf("Substitute(file://) = %v, %v", got, err)
	}
	sameItems(t, src, dst, dep, lib, app)
}

// collectingTarget runs a collection right after lib is first prepared.
type collectingTarget struct {
	*store.Store
	lib      string
	prepares atomic.Int32
}

func (c *collectingTarget) PrepareImport(ctx context.Context, r io.Reader, o store.ImportOptions) (*store.PreparedImport, error) {
	pi, err := c.Store.PrepareImport(ctx, r, o)
	if err == nil && o.Path == c.lib && c.prepares.Add(1) == 1 {
		if _, err := c.Store.CollectGarbage(ctx, store.GCOptions{}); err != nil {
			pi.Discard()
			return nil, err
		}
	}
	return pi, err
}

// A collection while the closure downloads may take a blob a prepared item
// found present (and so did not write): its commit is refused, and the
// Substituter fetches that item again.
func TestSubstituteCollectionMeanwhile(t *testing.T) {
	ctx := context.Background()
	src := newStore(t, store.ModeBlob)
	dep, lib, app := closure(t, src)
	sk, pk := newKey(t)
	srv := serve(t, src, "none", &sk)
	dst := newStore(t, store.ModeBlob)
	// an unrooted item holding lib's library: its blob is present when lib
	// is prepared, and unnamed once the collection deletes the item
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "libx.so"), randomBytes(2, 100<<10), 0o755); err != nil {
		t.Fatal(err)
	}
	tr := dst.NewTempRoots() // closed at once: nothing keeps the item
	other, err := dst.Add(store.WithTempRoots(ctx, tr), d, store.AddOptions{})
	tr.Close()
	if err != nil {
		t.Fatal(err)
	}
	target := &collectingTarget{Store: dst, lib: lib}
	got, err := substituter(t, srv.URL, pk, nil).Substitute(ctx, target, []string{app})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{dep, lib, app}; !slices.Equal(got, want) {
		t.Errorf("Substitute = %v; want %v", got, want)
	}
	if ok, _ := dst.IsValid(other); ok {
		t.Fatalf("%s survived the collection: the test proves nothing", other)
	}
	if n := target.prepares.Load(); n != 2 {
		t.Errorf("lib prepared %d times; want 2 (fetched again after the collection)", n)
	}
	sameItems(t, src, dst, dep, lib, app)
	rep, err := dst.Verify(ctx, store.VerifyOptions{Contents: true})
	if err != nil || len(rep.Problems) != 0 {
		t.Errorf("verify --contents = %+v, %v", rep, err)
	}
	checkClean(t, dst)
}
