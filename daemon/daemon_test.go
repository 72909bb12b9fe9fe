package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// serve starts a daemon on a new store in-process and returns a client;
// the cleanup stops the daemon and checks that it removed its socket.
func serve(t *testing.T, mode store.Mode) (*store.Store, *Client) {
	t.Helper()
	s, err := store.Init(filepath.Join(t.TempDir(), "state"), store.InitOptions{Mode: mode}, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, s, Options{Ready: func(string) { close(ready) }, ShutdownTimeout: 5 * time.Second})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon did not start")
	}
	c, err := Dial(s.StateDir())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v", err)
		}
		if _, err := os.Lstat(SocketPath(s.StateDir())); err == nil {
			t.Errorf("the socket is still there after the daemon stopped")
		}
		rep, err := s.Verify(context.Background(), store.VerifyOptions{Contents: true})
		if err != nil || len(rep.Problems) > 0 {
			t.Errorf("Verify after the daemon stopped: %v %v", rep, err)
		}
		s.Close()
	})
	return s, c
}

func tree(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "pkg")
	os.MkdirAll(filepath.Join(d, "bin"), 0o755)
	os.WriteFile(filepath.Join(d, "bin", "run"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(d, "big"), bytes.Repeat([]byte("0123456789"), 300000), 0o644)
	os.Symlink("bin/run", filepath.Join(d, "link"))
	return d
}

func TestClientMirrorsStore(t *testing.T) {
	for _, mode := range []store.Mode{store.ModeBlob, store.ModeDisk, store.ModeChunk} {
		t.Run(string(mode), func(t *testing.T) {
			s, c := serve(t, mode)
			ctx := context.Background()
			src := tree(t)
			want, err := s.PathOf(ctx, src, store.AddOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got, err := c.PathOf(ctx, src, store.AddOptions{}); err != nil || got != want {
				t.Errorf("PathOf = %q, %v; want %q", got, err, want)
			}
			p, err := c.Add(ctx, src, store.AddOptions{})
			if err != nil || p != want {
				t.Fatalf("Add = %q, %v; want %q", p, err, want)
			}
			var srcNAR, got bytes.Buffer
			nar.DumpPath(&srcNAR, src)
			if err := c.Export(ctx, &got, p); err != nil || !bytes.Equal(got.Bytes(), srcNAR.Bytes()) {
				t.Errorf("Export: %v (equal: %v)", err, bytes.Equal(got.Bytes(), srcNAR.Bytes()))
			}
			q, err := c.Import(ctx, bytes.NewReader(srcNAR.Bytes()), store.ImportOptions{Name: "again", Refs: []string{p}})
			if err != nil {
				t.Fatal(err)
			}
			var ls []string
			if err := c.List(func(x string) bool { ls = append(ls, x); return true }); err != nil {
				t.Fatal(err)
			}
			if want := []string{p, q}; !slices.Equal(sortedCopy(ls), sortedCopy(want)) {
				t.Errorf("List = %v; want %v", ls, want)
			}
			in, err := c.Info(q)
			if err != nil || !slices.Equal(in.References, []string{p}) {
				t.Errorf("Info = %+v, %v", in, err)
			}
			cl, err := c.Closure([]string{q})
			if err != nil || !slices.Equal(cl, []string{p, q}) {
				t.Errorf("Closure = %v, %v", cl, err)
			}
			var cat bytes.Buffer
			if err := c.Cat(ctx, &cat, p+"/bin/run"); err != nil || cat.String() != "#!/bin/sh\necho hi\n" {
				t.Errorf("Cat = %q, %v", cat.String(), err)
			}
			var bundle, local bytes.Buffer
			if err := c.ExportBundle(ctx, &bundle, []string{q, p}); err != nil {
				t.Fatal(err)
			}
			if err := s.ExportBundle(ctx, &local, []string{q, p}); err != nil || !bytes.Equal(bundle.Bytes(), local.Bytes()) {
				t.Errorf("ExportBundle through the daemon differs from the store's own (%v)", err)
			}
			if rep, err := c.Verify(ctx, store.VerifyOptions{Contents: true}); err != nil || len(rep.Problems) != 0 || rep.Paths != 2 {
				t.Errorf("Verify = %+v, %v", rep, err)
			}
			if mode == store.ModeDisk {
				if _, err := c.Optimise(ctx); err != nil {
					t.Errorf("Optimise: %v", err)
				}
			}
		})
	}
}

func sortedCopy(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// Errors keep their text and map back to the store's sentinels.
func TestRemoteErrors(t *testing.T) {
	s, c := serve(t, store.ModeBlob)
	ctx := context.Background()
	missing := s.StoreDir() + "/00000000000000000000000000000000-nope"
	_, werr := s.Info(missing)
	_, err := c.Info(missing)
	if !errors.Is(err, store.ErrNotValid) || err.Error() != werr.Error() {
		t.Errorf("Info(missing) = %v; want %v (ErrNotValid)", err, werr)
	}
	_, err = c.Import(ctx, strings.NewReader("garbage\n"), store.ImportOptions{Name: "x"})
	if !errors.Is(err, store.ErrBadInput) || !strings.Contains(err.Error(), "offset 0") {
		t.Errorf("Import(garbage) = %v; want a bad-input error naming the offset", err)
	}
	// An export that fails after it started streaming reports it (trailer).
	src := tree(t)
	p, err := c.Add(ctx, src, store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blobs, _ := filepath.Glob(filepath.Join(s.StateDir(), "blobs", "*", "*"))
	for _, b := range blobs {
		if fi, _ := os.Stat(b); fi.Size() == 3000000 {
			os.Rename(b, b+".away")
			defer os.Rename(b+".away", b) // sound again for the cleanup's verify
		}
	}
	var sink bytes.Buffer
	err = c.Export(ctx, &sink, p)
	if err == nil || sink.Len() == 0 {
		t.Errorf("Export with a blob missing = %v after %d bytes; want an error after the stream began", err, sink.Len())
	}
}

func TestAccessRule(t *testing.T) {
	srv := &Server{owner: 1000, groupGID: -1}
	cases := []struct {
		cred  *unix.Ucred
		group int
		want  bool
	}{
		{&unix.Ucred{Uid: 1000, Gid: 1000}, -1, true},
		{&unix.Ucred{Uid: 0, Gid: 0}, -1, true},
		{&unix.Ucred{Uid: 1001, Gid: 1001}, -1, false},
		{&unix.Ucred{Uid: 1001, Gid: 50}, 50, true},
		{&unix.Ucred{Uid: 1001, Gid: 1001, Pid: int32(os.Getpid())}, 4242424, false},
		{nil, -1, false},
	}
	for _, c := range cases {
		srv.groupGID = c.group
		if got := srv.allowed(c.cred); got != c.want {
			t.Errorf("allowed(%+v) with group %d = %v; want %v", c.cred, c.group, got, c.want)
		}
	}
}

func TestStaleSocketAndSecondDaemon(t *testing.T) {
	s, err := store.Init(filepath.Join(t.TempDir(), "state"), store.InitOptions{}, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sock := SocketPath(s.StateDir())
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a daemon killed with SIGKILL leaves this behind
	if _, err := Dial(s.StateDir()); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Dial(stale socket) = %v; want ErrNoDaemon", err)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Errorf("the stale socket was not removed")
	}
	_, c := serve(t, store.ModeBlob)
	st := c.StoreInfo()
	s2, err := store.Open(st.StateDir, store.Options{LockTimeout: 200 * time.Millisecond})
	if err == nil {
		defer s2.Close()
		if err := Serve(context.Background(), s2, Options{}); err == nil || !strings.Contains(err.Error(), "already serves") {
			t.Errorf("a second daemon: %v; want 'another daemon already serves'", err)
		}
	}
}

// A session's temp roots last until the session ends.
func TestSessionTempRoots(t *testing.T) {
	s, c := serve(t, store.ModeBlob)
	ctx := context.Background()
	end, err := c.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Add(ctx, tree(t), store.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.StateDir(), "temproots")
	found := func() bool {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			if strings.Contains(string(b), filepath.Base(p)+"\x00") {
				return true
			}
		}
		return false
	}
	if !found() {
		t.Errorf("no temp-roots file holds %s while the session is open", p)
	}
	end()
	deadline := time.Now().Add(5 * time.Second)
	for found() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if found() {
		t.Errorf("the session's temp roots outlived it")
	}
}
