package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// errNotFound is a file the cache does not have (HTTP 404/403/410, or no
// such file): Nix's "not in the cache", never retried.
var errNotFound = errors.New("not in the binary cache")

// transientError is a failure worth another attempt: a 5xx or 429 answer,
// a network error, a body that stalled.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func isTransient(err error) bool {
	var te *transientError
	return errors.As(err, &te)
}

// fetcher opens files of a binary cache by their path relative to its root.
type fetcher interface {
	open(ctx context.Context, rel string) (io.ReadCloser, error)
	String() string
}

func newFetcher(raw string, hc *http.Client) (fetcher, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("bad cache URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("bad cache URL %q: no host", raw)
		}
		u.RawQuery, u.Fragment = "", "" // Nix's ?store=... options are not ours
		return &httpFetcher{base: strings.TrimSuffix(u.String(), "/"), hc: hc}, nil
	case "file":
		if u.Path == "" || u.Host != "" {
			return nil, fmt.Errorf("bad cache URL %q: want file:///absolute/dir", raw)
		}
		st, err := os.Stat(u.Path)
		if err != nil {
			return nil, fmt.Errorf("binary cache %s: %w", raw, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("binary cache %s: not a directory", raw)
		}
		return fileFetcher(u.Path), nil
	}
	return nil, fmt.Errorf("bad cache URL %q: want http://, https:// or file://", raw)
}

type fileFetcher string

func (d fileFetcher) String() string { return "file://" + string(d) }

func (d fileFetcher) open(ctx context.Context, rel string) (io.ReadCloser, error) {
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(rel)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", rel, errNotFound)
	}
	return f, err
}

type httpFetcher struct {
	base string
	hc   *http.Client
}

func (h *httpFetcher) String() string { return h.base }

func (h *httpFetcher) open(ctx context.Context, rel string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/"+rel, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, &transientError{err}
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return &netBody{resp.Body}, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w", rel, errNotFound)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
		resp.Body.Close()
		return nil, &transientError{fmt.Errorf("%s: HTTP %s", rel, resp.Status)}
	}
	resp.Body.Close()
	return nil, fmt.Errorf("%s: HTTP %s", rel, resp.Status)
}

// netBody marks errors reading an HTTP body (a reset, a cut connection) as
// transient.
type netBody struct{ io.ReadCloser }

func (b *netBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = &transientError{err}
	}
	return n, err
}

// stallReader fails a read that waits longer than d for data: the attempt's
// context is cancelled (which unblocks the read) and the error is a
// transient "stalled".
type stallReader struct {
	r       io.Reader
	d       time.Duration
	timer   *time.Timer
	mu      sync.Mutex
	stalled bool
	readErr error // the first transient read error, whatever a decompressor made of it
}

// watchStall returns a context cancelled when the returned reader (once
// set with attach) sees no data for d, and the function that stops the
// watch. The watch starts at once, so a server that never answers stalls
// too.
func watchStall(ctx context.Context, d time.Duration) (context.Context, *stallReader, func()) {
	ctx, cancel := context.WithCancel(ctx)
	s := &stallReader{d: d}
	s.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		s.stalled = true
		s.mu.Unlock()
		cancel()
	})
	return ctx, s, func() { s.timer.Stop(); cancel() }
}

func (s *stallReader) attach(r io.Reader) { s.r = r }

func (s *stallReader) isStalled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalled
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.timer.Reset(s.d)
	}
	if err != nil && err != io.EOF && s.isStalled() {
		err = &transientError{fmt.Errorf("stalled: no data for %v", s.d)}
	}
	if err != nil && isTransient(err) {
		s.mu.Lock()
		if s.readErr == nil {
			s.readErr = err
		}
		s.mu.Unlock()
	}
	return n, err
}

// retry runs attempt until it succeeds, fails for good, or has failed
// transiently attempts times, waiting backoff, then twice as long (with
// jitter, at most 10 s) between attempts. Each attempt gets a context that
// is cancelled when its reads stall for stall.
func retry(ctx context.Context, attempts int, backoff, stall time.Duration, what string, attempt func(ctx context.Context, sr *stallReader) error) error {
	wait := backoff
	var err error
	for i := 1; ; i++ {
		actx, sr, stop := watchStall(ctx, stall)
		err = attempt(actx, sr)
		stalled := sr.isStalled()
		sr.mu.Lock()
		readErr := sr.readErr
		sr.mu.Unlock()
		stop()
		switch {
		case err == nil || ctx.Err() != nil:
		case stalled:
			err = &transientError{fmt.Errorf("stalled: no data for %v", stall)}
		case readErr != nil && !isTransient(err):
			err = readErr // a cut connection, which a decompressor reported as corrupt data
		}
		if err == nil || !isTransient(err) || ctx.Err() != nil {
			return err
		}
		if i >= attempts {
			return fmt.Errorf("%s: giving up after %d attempts: %w", what, i, err)
		}
		d := wait + time.Duration(rand.Int64N(int64(wait)/4+1))
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// CheckURL checks that raw is a binary cache URL storefs can read
// (http://HOST..., https://HOST... or file:///DIR), without fetching.
func CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("bad cache URL %q: %w", raw, err)
	}
	switch {
	case (u.Scheme == "http" || u.Scheme == "https") && u.Host != "":
		return nil
	case u.Scheme == "file" && u.Host == "" && strings.HasPrefix(u.Path, "/"):
		return nil
	}
	return fmt.Errorf("bad cache URL %q: want http://HOST/..., https://HOST/... or file:///DIR", raw)
}
