package cache_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/storefs/storefs/cache"
	"github.com/storefs/storefs/store"
)

// faultServer serves the static cache in dir, handing the requests for the
// NAR of target (and its narinfo) to fault, which gets the request number
// (from 1) and the file's bytes and returns whether it answered.
type faultServer struct {
	*httptest.Server
	narHits atomic.Int64
}

func newFaultServer(t *testing.T, dir, narURL string, fault func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool) *faultServer {
	fs := &faultServer{}
	files := http.FileServer(http.Dir(dir))
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/"+narURL {
			n := fs.narHits.Add(1)
			data, err := os.ReadFile(filepath.Join(dir, narURL))
			if err != nil {
				t.Error(err)
			}
			if fault(n, w, r, data) {
				return
			}
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(fs.Close)
	return fs
}

// writeCache writes app's closure into a static cache and returns the dir
// and app's narinfo's URL.
func writeCache(t *testing.T, src *store.Store, app, comp string, sk signature.SecretKey) (dir, narURL string) {
	dir = t.TempDir()
	if _, err := cache.WriteDir(context.Background(), src, dir, []string{app}, cache.WriteOptions{StoreDir: storeDir, Compression: comp, SignKey: &sk}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, filepath.Base(app)[:32]+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := cache.ParseNarInfo(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return dir, ni.URL
}

// rewriteNarInfo edits app's narinfo in dir, and re-signs it with sk if set.
func rewriteNarInfo(t *testing.T, dir, app string, edit func(string) string, sk *signature.SecretKey) {
	name := filepath.Join(dir, filepath.Base(app)[:32]+".narinfo")
	b, _ := os.ReadFile(name)
	text := edit(string(b))
	if sk != nil {
		ni, err := cache.ParseNarInfo(strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		ni.Signatures = nil
		if err := cache.Sign(storeDir, ni, *sk); err != nil {
			t.Fatal(err)
		}
		text = ni.String()
	}
	if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Every fault is refused (after retries where they are worth it) or
// survived as documented; a refusal leaves the target store exactly as it
// was (the same valid paths, a clean verify with contents, an empty tmp/),
// even though the other items of the closure downloaded fine.
func TestSubstituteFaults(t *testing.T) {
	ctx := context.Background()
	src := newStore(t, store.ModeBlob)
	dep, lib, app := closure(t, src)
	sk, pk := newKey(t)
	otherSK, _ := newKey(t)

	serveBytes := func(w http.ResponseWriter, data []byte) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data)
	}
	type tc struct {
		name     string
		comp     string
		fault    func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool
		narinfo  func(t *testing.T, dir string) // edits the cache before the run
		wantErr  string                         // "" = success
		wantHits int64                          // NAR requests made (0: not checked)
	}
	cases := []tc{
		{name: "truncated file", comp: "none", wantErr: "file size mismatch", wantHits: 1,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				serveBytes(w, data[:len(data)-100])
				return true
			}},
		{name: "truncated xz file", comp: "xz", wantErr: "corrupt xz data", wantHits: 1,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				serveBytes(w, data[:len(data)/2])
				return true
			}},
		{name: "connection cut every time", comp: "none", wantErr: "giving up after 3 attempts", wantHits: 3,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				w.Write(data[:len(data)/2])
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return true
			}},
		{name: "connection cut once", comp: "zstd", wantHits: 2,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				if n > 1 {
					return false
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				w.Write(data[:len(data)/2])
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return true
			}},
		{name: "flipped byte", comp: "none", wantErr: "file hash mismatch", wantHits: 1,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				data[len(data)/2] ^= 1
				serveBytes(w, data)
				return true
			}},
		{name: "500 then 200", comp: "xz", wantHits: 2,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				if n == 1 {
					http.Error(w, "overloaded", http.StatusInternalServerError)
					return true
				}
				return false
			}},
		{name: "500 always", comp: "xz", wantErr: "HTTP 503", wantHits: 3,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return true
			}},
		{name: "404", comp: "xz", wantErr: "the NAR is missing", wantHits: 1,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				http.NotFound(w, r)
				return true
			}},
		{name: "stall then 200", comp: "none", wantHits: 2,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				if n > 1 {
					return false
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				w.Write(data[:len(data)/2])
				w.(http.Flusher).Flush()
				select { // hang until the client gives up
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				return true
			}},
		{name: "stall before headers", comp: "none", wantErr: "stalled", wantHits: 3,
			fault: func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				return true
			}},
		{name: "signed by another key", comp: "xz", wantErr: "no valid signature by a trusted key", wantHits: 0,
			narinfo: func(t *testing.T, dir string) {
				rewriteNarInfo(t, dir, app, func(s string) string { return s }, &otherSK)
			}},
		{name: "unsigned", comp: "xz", wantErr: "no valid signature", wantHits: 0,
			narinfo: func(t *testing.T, dir string) {
				rewriteNarInfo(t, dir, app, func(s string) string { return s[:strings.Index(s, "Sig: ")] }, nil)
			}},
		{name: "edited after signing", comp: "xz", wantErr: "no valid signature", wantHits: 0,
			narinfo: func(t *testing.T, dir string) {
				rewriteNarInfo(t, dir, app, func(s string) string {
					return strings.Replace(s, "References: ", "References: "+filepath.Base(dep)+" ", 1)
				}, nil)
			}},
		{name: "signed wrong NarHash", comp: "xz", wantErr: "NAR hash mismatch", wantHits: 1,
			narinfo: func(t *testing.T, dir string) {
				rewriteNarInfo(t, dir, app, func(s string) string {
					i := strings.Index(s, "NarHash: sha256:") + len("NarHash: sha256:")
					return s[:i] + "0000000000" + s[i+10:]
				}, &sk)
			}},
		{name: "signed wrong NarSize", comp: "zstd", wantErr: "NAR size mismatch", wantHits: 1,
			narinfo: func(t *testing.T, dir string) {
				in, _ := src.Info(app)
				rewriteNarInfo(t, dir, app, func(s string) string {
					return strings.Replace(s, "NarSize: "+strconv.FormatInt(in.NarSize, 10), "NarSize: "+strconv.FormatInt(in.NarSize-8, 10), 1)
				}, &sk)
			}},
	}
	// The store prepares each NAR as it downloads (cache.Preparer); a
	// daemon's client only imports, so NARs are spooled first. Both must
	// refuse alike.
	type importOnly struct{ cache.Target }
	for _, spooled := range []bool{false, true} {
		for _, c := range cases {
			name := c.name
			if spooled {
				name += "/spooled"
			}
			t.Run(name, func(t *testing.T) {
				dir, narURL := writeCache(t, src, app, c.comp, sk)
				if c.narinfo != nil {
					c.narinfo(t, dir)
				}
				fault := c.fault
				if fault == nil {
					fault = func(int64, http.ResponseWriter, *http.Request, []byte) bool { return false }
				}
				srv := newFaultServer(t, dir, narURL, fault)
				dst := newStore(t, store.ModeDisk)
				// The target holds part of the closure already.
				if _, err := substituter(t, srv.URL, pk, nil).Substitute(ctx, dst, []string{dep}); err != nil {
					t.Fatal(err)
				}
				before := list(t, dst)
				sub := substituter(t, srv.URL, pk, func(o *cache.SubstituteOptions) {
					o.Attempts = 3
					o.StallTimeout = 300 * time.Millisecond
				})
				var target cache.Target = dst
				if spooled {
					target = importOnly{dst}
				}
				got, err := sub.Substitute(ctx, target, []string{app})
				if c.wantErr == "" {
					if err != nil || !slices.Equal(got, []string{lib, app}) {
						t.Fatalf("Substitute = %v, %v; want [lib app]", got, err)
					}
					sameItems(t, src, dst, dep, lib, app)
				} else {
					if err == nil || !strings.Contains(err.Error(), c.wantErr) {
						t.Fatalf("Substitute = %v, %v; want an error containing %q", got, err, c.wantErr)
					}
					if len(got) != 0 {
						t.Errorf("Substitute imported %v before failing", got)
					}
					if after := list(t, dst); !slices.Equal(after, before) {
						t.Errorf("store after the refusal: %v; want %v", after, before)
					}
					t.Logf("refused: %v", err)
				}
				if c.wantHits != 0 && srv.narHits.Load() != c.wantHits {
					t.Errorf("%d requests for the NAR; want %d", srv.narHits.Load(), c.wantHits)
				}
				if c.wantHits == 0 && srv.narHits.Load() != 0 {
					t.Errorf("%d requests for the NAR; want none (refused before downloading)", srv.narHits.Load())
				}
				checkClean(t, dst)
			})
		}
	}
}

func TestSubstituteStoreDirMismatch(t *testing.T) {
	src := newStore(t, store.ModeBlob)
	_, _, app := closure(t, src)
	sk, pk := newKey(t)
	dir, _ := writeCache(t, src, app, "none", sk)
	os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /gnu/store\n"), 0o644)
	dst := newStore(t, store.ModeBlob)
	_, err := substituter(t, "file://"+dir, pk, nil).Substitute(context.Background(), dst, []string{app})
	if err == nil || !strings.Contains(err.Error(), "is for store dir /gnu/store, not this store's /nix/store") {
		t.Errorf("Substitute = %v; want a store dir mismatch", err)
	}
	os.Remove(filepath.Join(dir, "nix-cache-info"))
	_, err = substituter(t, "file://"+dir, pk, nil).Substitute(context.Background(), dst, []string{app})
	if err == nil || !strings.Contains(err.Error(), "no nix-cache-info") {
		t.Errorf("Substitute without nix-cache-info = %v", err)
	}
	if len(list(t, dst)) != 0 {
		t.Errorf("something was imported")
	}
	if _, err := cache.NewSubstituter(cache.SubstituteOptions{URL: "ftp://x", StoreDir: storeDir, NoCheckSigs: true}); err == nil {
		t.Errorf("NewSubstituter(ftp://) succeeded")
	}
	if _, err := cache.NewSubstituter(cache.SubstituteOptions{URL: "file://" + dir, StoreDir: storeDir}); err == nil {
		t.Errorf("NewSubstituter without trusted keys succeeded")
	}
}
