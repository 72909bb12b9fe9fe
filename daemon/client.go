package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// Client talks to the daemon of one store. Its methods mirror *store.Store's
// (same results, same error texts), so the CLI uses either.
type Client struct {
	sock       string
	hc         *http.Client
	info       StoreInfo
	session    string
	endSession func()
}

// Dial connects to the daemon serving the store in state. With no socket,
// or a stale one (nobody listening: a daemon that was killed), it returns
// ErrNoDaemon, removing the stale socket. A socket this user may not use is
// a clear error, not a fallback.
func Dial(state string) (*Client, error) {
	sock := SocketPath(state)
	if _, err := os.Lstat(sock); err != nil {
		return nil, ErrNoDaemon
	}
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
			os.Remove(sock) // stale: the daemon died without removing it
			return nil, ErrNoDaemon
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			return nil, fmt.Errorf("cannot use the storefs daemon at %s: %w (it belongs to another user)", sock, ErrForbidden)
		}
		return nil, fmt.Errorf("cannot reach the storefs daemon at %s: %w", sock, err)
	}
	c.Close()
	cl := &Client{
		sock: sock,
		hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			DisableCompression: true,
			MaxIdleConns:       4,
		}},
	}
	if err := cl.getJSON(context.Background(), "/v1/store", &cl.info); err != nil {
		return nil, err
	}
	return cl, nil
}

// Info describes the store the daemon serves.
func (c *Client) StoreInfo() StoreInfo { return c.info }

// StoreDir is the store dir of the store the daemon serves.
func (c *Client) StoreDir() string { return c.info.StoreDir }

// Close ends a session opened by Session and releases idle connections.
func (c *Client) Close() error {
	if c.endSession != nil {
		c.endSession()
	}
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) url(path string, q url.Values) string {
	u := "http://storefs" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.session != "" {
		req.Header.Set("Storefs-Session", c.session)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("the storefs daemon went away during the request (%v)", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	var ae apiError
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &ae) != nil || ae.Error == "" {
		return fmt.Errorf("storefs daemon: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return &RemoteError{Msg: ae.Error, Kind: ae.Kind}
}

func (c *Client) getJSON(ctx context.Context, path string, out any) error {
	resp, err := c.do(ctx, "GET", path, nil, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *Client) postJSON(ctx context.Context, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.do(ctx, "POST", path, q, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// stream copies a streamed response body to w and reports the error in its
// trailer, if any.
func (c *Client) stream(ctx context.Context, method, path string, q url.Values, body io.Reader, w io.Writer) error {
	resp, err := c.do(ctx, method, path, q, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if msg := resp.Trailer.Get("Storefs-Error"); msg != "" {
		return &RemoteError{Msg: msg, Kind: resp.Trailer.Get("Storefs-Error-Kind")}
	}
	return nil
}

// Session opens a client session: temp roots of requests made through c
// from now on last until end is called or this process dies (the daemon
// sees the connection close).
func (c *Client) Session(ctx context.Context) (end func(), err error) {
	sctx, cancel := context.WithCancel(context.Background())
	resp, err := c.do(sctx, "POST", "/v1/session", nil, nil, "")
	if err != nil {
		cancel()
		return nil, err
	}
	var s struct {
		Session string `json:"session"`
	}
	if err := json.NewDecoder(bufio.NewReader(resp.Body)).Decode(&s); err != nil {
		resp.Body.Close()
		cancel()
		return nil, err
	}
	c.session = s.Session
	c.endSession = func() {
		c.session, c.endSession = "", nil
		cancel()
		resp.Body.Close()
	}
	return c.endSession, nil
}

func refsQuery(name string, refs []string, noDedup bool, root string) url.Values {
	q := url.Values{}
	if root != "" {
		q.Set("root", root)
	}
	if name != "" {
		q.Set("name", name)
	}
	for _, r := range refs {
		q.Add("ref", r)
	}
	if noDedup {
		q.Set("nodedup", "1")
	}
	return q
}

// dumpSource streams the NAR of src into a pipe, counting bytes for progress.
func dumpSource(src string, prog *store.Progress) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		var w io.Writer = pw
		if prog != nil && prog.Bytes != nil {
			w = &progressWriter{w: pw, fn: prog.Bytes}
		}
		pw.CloseWithError(nar.DumpPath(w, src))
	}()
	return pr
}

type progressWriter struct {
	w  io.Writer
	fn func(int64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.fn(int64(n))
	return n, err
}

// Add sends the NAR of src to the daemon, which adds it as store.Add would.
func (c *Client) Add(ctx context.Context, src string, o store.AddOptions) (string, error) {
	name, err := store.SourceName(src, o.Name)
	if err != nil {
		return "", err
	}
	if len(o.Refs) > 0 { // checked first, as the store does, for the same errors
		if err := c.postJSON(ctx, "/v1/refs", nil, pathsBody{Paths: o.Refs}, nil); err != nil {
			return "", err
		}
	}
	if err := store.CheckSource(src); err != nil {
		return "", fmt.Errorf("add %s: %w", src, err)
	}
	body := dumpSource(src, o.Progress)
	defer body.Close()
	var res AddResult
	if err := c.postNAR(ctx, "/v1/add", refsQuery(name, o.Refs, o.NoDedup, o.Root), body, &res); err != nil {
		return "", fmt.Errorf("add %s: %w", src, err)
	}
	if o.Dedup != nil && res.Dedup != nil {
		o.Dedup.Add(*res.Dedup)
	}
	return res.Path, nil
}

func (c *Client) postNAR(ctx context.Context, path string, q url.Values, body io.Reader, out any) error {
	resp, err := c.do(ctx, "POST", path, q, body, "application/x-nix-archive")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// PathOf computes the store path of src through the daemon (which knows the
// store dir and the references), adding nothing.
func (c *Client) PathOf(ctx context.Context, src string, o store.AddOptions) (string, error) {
	name, err := store.SourceName(src, o.Name)
	if err != nil {
		return "", err
	}
	if err := c.postJSON(ctx, "/v1/refs", nil, pathsBody{Paths: o.Refs}, nil); err != nil {
		return "", err
	}
	if err := store.CheckSource(src); err != nil {
		return "", err
	}
	body := dumpSource(src, nil)
	defer body.Close()
	var res AddResult
	if err := c.postNAR(ctx, "/v1/path", refsQuery(name, o.Refs, false, ""), body, &res); err != nil {
		return "", err
	}
	return res.Path, nil
}

// Import streams a NAR to the daemon.
func (c *Client) Import(ctx context.Context, r io.Reader, o store.ImportOptions) (string, error) {
	if o.Progress != nil && o.Progress.Bytes != nil {
		r = io.TeeReader(r, &progressWriter{w: io.Discard, fn: o.Progress.Bytes})
	}
	var res AddResult
	q := refsQuery(o.Name, o.Refs, o.NoDedup, o.Root)
	for k, v := range map[string]string{"path": o.Path, "deriver": o.Deriver, "ca": o.CA, "narhash": o.NarHash} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.NarSize != 0 {
		q.Set("narsize", strconv.FormatInt(o.NarSize, 10))
	}
	if err := c.postNAR(ctx, "/v1/import", q, r, &res); err != nil {
		return "", err
	}
	if o.Dedup != nil && res.Dedup != nil {
		o.Dedup.Add(*res.Dedup)
	}
	return res.Path, nil
}

// ImportBundle streams a `nix-store --export` bundle to the daemon.
func (c *Client) ImportBundle(ctx context.Context, r io.Reader, prog *store.Progress) ([]string, error) {
	if prog != nil && prog.Bytes != nil {
		r = io.TeeReader(r, &progressWriter{w: io.Discard, fn: prog.Bytes})
	}
	req, err := http.NewRequestWithContext(ctx, "POST", c.url("/v1/import-bundle", nil), r)
	if err != nil {
		return nil, err
	}
	if c.session != "" {
		req.Header.Set("Storefs-Session", c.session)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("storefs daemon: %w", err)
	}
	defer resp.Body.Close()
	var res BundleResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return nil, fmt.Errorf("storefs daemon: %s: %w", resp.Status, err)
	}
	if res.Error != "" {
		return res.Paths, &RemoteError{Msg: res.Error, Kind: res.Kind}
	}
	return res.Paths, nil
}

// Export writes the NAR of p.
func (c *Client) Export(ctx context.Context, w io.Writer, p string) error {
	return c.stream(ctx, "GET", "/v1/export", url.Values{"path": {p}}, nil, w)
}

// ExportBundle writes paths in `nix-store --export` format.
func (c *Client) ExportBundle(ctx context.Context, w io.Writer, paths []string) error {
	b, _ := json.Marshal(pathsBody{Paths: paths})
	return c.stream(ctx, "POST", "/v1/export-bundle", nil, bytes.NewReader(b), w)
}

// List calls fn with every valid path, sorted, until fn returns false.
func (c *Client) List(fn func(path string) bool) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := c.do(ctx, "GET", "/v1/paths", nil, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if !fn(sc.Text()) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if msg := resp.Trailer.Get("Storefs-Error"); msg != "" {
		return &RemoteError{Msg: msg, Kind: resp.Trailer.Get("Storefs-Error-Kind")}
	}
	return nil
}

// Info returns what the registry knows about p.
func (c *Client) Info(p string) (*store.Info, error) {
	var in store.Info
	if err := c.getJSON(context.Background(), "/v1/info?"+url.Values{"path": {p}}.Encode(), &in); err != nil {
		return nil, err
	}
	return &in, nil
}

// LookupHashPart returns the valid path whose hash part is hash32.
func (c *Client) LookupHashPart(hash32 string) (string, error) {
	var res LookupResult
	if err := c.getJSON(context.Background(), "/v1/lookup?"+url.Values{"hash": {hash32}}.Encode(), &res); err != nil {
		return "", err
	}
	return res.Path, nil
}

// Closure returns the requisites of paths, dependencies first.
func (c *Client) Closure(paths []string) ([]string, error) {
	var out pathsBody
	if err := c.postJSON(context.Background(), "/v1/closure", nil, pathsBody{Paths: paths}, &out); err != nil {
		return nil, err
	}
	return out.Paths, nil
}

// Cat writes a file's bytes.
func (c *Client) Cat(ctx context.Context, w io.Writer, p string) error {
	return c.stream(ctx, "GET", "/v1/cat", url.Values{"path": {p}}, nil, w)
}

// Verify runs the daemon's verify.
func (c *Client) Verify(ctx context.Context, o store.VerifyOptions) (*store.VerifyReport, error) {
	q := url.Values{}
	if o.Contents {
		q.Set("contents", "1")
	}
	if o.Repair {
		q.Set("repair", "1")
	}
	var rep store.VerifyReport
	if err := c.postJSON(ctx, "/v1/verify", q, nil, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// Optimise runs the daemon's optimise.
func (c *Client) Optimise(ctx context.Context) (cas.DedupStats, error) {
	var st cas.DedupStats
	err := c.postJSON(ctx, "/v1/optimise", nil, nil, &st)
	return st, err
}

// Roots lists the GC roots.
func (c *Client) Roots() ([]store.Root, error) {
	var roots []store.Root
	err := c.getJSON(context.Background(), "/v1/roots", &roots)
	return roots, err
}

// AddRoot makes a permanent root.
func (c *Client) AddRoot(ctx context.Context, name, p string, indirect bool) (store.Root, error) {
	if indirect {
		if abs, err := filepath.Abs(name); err == nil {
			name = abs // the daemon's working directory is not ours
		}
	}
	var root store.Root
	err := c.postJSON(ctx, "/v1/roots", nil, RootRequest{Name: name, Path: p, Indirect: indirect}, &root)
	return root, err
}

// RemoveRoot removes a root.
func (c *Client) RemoveRoot(name string) error {
	if strings.Contains(name, "/") {
		if abs, err := filepath.Abs(name); err == nil {
			name = abs
		}
	}
	resp, err := c.do(context.Background(), "DELETE", "/v1/roots", url.Values{"name": {name}}, nil, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// CollectGarbage runs a collection in the daemon.
func (c *Client) CollectGarbage(ctx context.Context, o store.GCOptions) (*store.GCResult, error) {
	var res store.GCResult
	if err := c.postJSON(ctx, "/v1/gc", nil, o, &res); err != nil {
		return nil, err
	}
	return &res, nil
}
