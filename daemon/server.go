package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/store"
)

// SocketName is the daemon's socket in the state dir.
const SocketName = "daemon.sock"

// SocketPath is where the daemon of the store in state listens.
func SocketPath(state string) string { return filepath.Join(state, SocketName) }

// Options configure Serve.
type Options struct {
	Logger *slog.Logger
	// Group, if set (a name or a numeric gid), may use the daemon besides
	// the store's owner and root; the socket is then 0660 in that group.
	Group string
	// ShutdownTimeout bounds how long in-flight requests may run after
	// SIGTERM before they are cut (and fail cleanly); 30s when zero.
	ShutdownTimeout time.Duration
	// Ready, if set, is called once the socket accepts connections.
	Ready func(socket string)
}

// Server serves one store.
type Server struct {
	s        *store.Store
	log      *slog.Logger
	owner    int
	groupGID int // -1: no group access

	mu       sync.Mutex
	sessions map[string]*session
	closing  bool
}

type session struct {
	roots *store.TempRoots
	done  chan struct{}
}

// Serve serves s on <state>/daemon.sock until ctx is done, then stops
// accepting, lets in-flight requests finish (bounded), removes the socket
// and returns nil. It holds the registry for its whole run.
func Serve(ctx context.Context, s *store.Store, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &Server{s: s, log: log, owner: os.Geteuid(), groupGID: -1, sessions: map[string]*session{}}
	if o.Group != "" {
		gid, err := lookupGroup(o.Group)
		if err != nil {
			return err
		}
		srv.groupGID = gid
	}
	sock := SocketPath(s.StateDir())
	if err := clearStale(sock); err != nil {
		return err
	}
	if err := s.Registry().Hold(); err != nil {
		return err
	}
	defer s.Registry().Release()

	// Listen under a temporary name and rename into place: a client must
	// never find the socket bound but not yet listening (it would take it
	// for a dead daemon's and remove it).
	tmp := fmt.Sprintf("%s.tmp-%d", sock, os.Getpid())
	os.Remove(tmp)
	old := unix.Umask(0o177) // the socket is born 0600
	ln, err := net.Listen("unix", tmp)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("daemon: listen on %s: %w", sock, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	defer os.Remove(sock)
	if srv.groupGID >= 0 {
		if err := os.Chown(tmp, -1, srv.groupGID); err == nil {
			err = os.Chmod(tmp, 0o660)
		}
		if err != nil {
			ln.Close()
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, sock); err != nil {
		ln.Close()
		os.Remove(tmp)
		return err
	}
	hs := &http.Server{
		Handler:     srv.routes(),
		ConnContext: connContext,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("daemon serving", "state", s.StateDir(), "socket", sock)
	if o.Ready != nil {
		o.Ready(sock)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	timeout := o.ShutdownTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	log.Info("daemon stopping", "timeout", timeout)
	srv.closeSessions()
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("in-flight requests did not finish in time; cutting them", "err", err)
		hs.Close()
	}
	return nil
}

// clearStale removes a socket nobody listens on; a live one is an error.
func clearStale(sock string) error {
	if _, err := os.Lstat(sock); err != nil {
		return nil
	}
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("daemon: another daemon already serves this store on %s", sock)
	}
	return os.Remove(sock)
}

func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("daemon: group %q: %w", g, err)
	}
	return strconv.Atoi(gr.Gid)
}

type credKey struct{}

func connContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, credKey{}, cred)
}

// allowed applies the access rule to a peer.
func (srv *Server) allowed(cred *unix.Ucred) bool {
	if cred == nil {
		return false
	}
	if int(cred.Uid) == srv.owner || cred.Uid == 0 {
		return true
	}
	if srv.groupGID < 0 {
		return false
	}
	if int(cred.Gid) == srv.groupGID {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cred.Pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, g := range strings.Fields(rest) {
				if n, _ := strconv.Atoi(g); n == srv.groupGID {
					return true
				}
			}
		}
	}
	return false
}

func (srv *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/store", srv.handleStore)
	mux.HandleFunc("POST /v1/refs", srv.handleRefs)
	mux.HandleFunc("POST /v1/add", srv.handleAdd)
	mux.HandleFunc("POST /v1/path", srv.handlePath)
	mux.HandleFunc("POST /v1/import", srv.handleImport)
	mux.HandleFunc("POST /v1/import-bundle", srv.handleImportBundle)
	mux.HandleFunc("GET /v1/export", srv.handleExport)
	mux.HandleFunc("POST /v1/export-bundle", srv.handleExportBundle)
	mux.HandleFunc("GET /v1/paths", srv.handlePaths)
	mux.HandleFunc("GET /v1/info", srv.handleInfo)
	mux.HandleFunc("GET /v1/lookup", srv.handleLookup)
	mux.HandleFunc("POST /v1/closure", srv.handleClosure)
	mux.HandleFunc("GET /v1/cat", srv.handleCat)
	mux.HandleFunc("POST /v1/verify", srv.handleVerify)
	mux.HandleFunc("POST /v1/optimise", srv.handleOptimise)
	mux.HandleFunc("POST /v1/session", srv.handleSession)
	mux.HandleFunc("GET /v1/roots", srv.handleRoots)
	mux.HandleFunc("POST /v1/roots", srv.handleAddRoot)
	mux.HandleFunc("DELETE /v1/roots", srv.handleRemoveRoot)
	mux.HandleFunc("POST /v1/gc", srv.handleGC)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, _ := r.Context().Value(credKey{}).(*unix.Ucred)
		if !srv.allowed(cred) {
			uid := uint32(1<<32 - 1)
			if cred != nil {
				uid = cred.Uid
			}
			srv.log.Warn("refused a client", "uid", uid)
			writeJSON(w, http.StatusForbidden, forbidden(uid, srv.owner))
			return
		}
		// The request's temp roots: its own set, or its client session's.
		var roots *store.TempRoots
		if id := r.Header.Get("Storefs-Session"); id != "" {
			srv.mu.Lock()
			if ses := srv.sessions[id]; ses != nil {
				roots = ses.roots
			}
			srv.mu.Unlock()
			if roots == nil {
				writeJSON(w, http.StatusNotFound, &apiError{Error: "unknown or ended session " + id, Kind: kindFailed})
				return
			}
		} else {
			roots = srv.s.NewTempRoots()
			defer roots.Close()
		}
		mux.ServeHTTP(w, r.WithContext(store.WithTempRoots(r.Context(), roots)))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	status, kind := classify(err)
	writeJSON(w, status, &apiError{Error: err.Error(), Kind: kind})
}

// streamWriter sends a streamed body: an error before the first byte is an
// ordinary error response; after it, the Storefs-Error trailer carries it.
type streamWriter struct {
	w       http.ResponseWriter
	bw      *bufio.Writer
	started bool
	ctype   string
}

func newStream(w http.ResponseWriter, ctype string) *streamWriter {
	w.Header().Set("Trailer", "Storefs-Error, Storefs-Error-Kind")
	return &streamWriter{w: w, ctype: ctype}
}

func (sw *streamWriter) Write(p []byte) (int, error) {
	if !sw.started {
		sw.started = true
		sw.w.Header().Set("Content-Type", sw.ctype)
		sw.w.WriteHeader(http.StatusOK)
		sw.bw = bufio.NewWriterSize(sw.w, 1<<16)
	}
	return sw.bw.Write(p)
}

func (sw *streamWriter) finish(err error) {
	if err == nil && !sw.started {
		sw.Write(nil)
	}
	if !sw.started {
		writeError(sw.w, err)
		return
	}
	if ferr := sw.bw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		_, kind := classify(err)
		sw.w.Header().Set("Storefs-Error", strings.ReplaceAll(err.Error(), "\n", " "))
		sw.w.Header().Set("Storefs-Error-Kind", kind)
	}
}

func (srv *Server) handleStore(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, StoreInfo{
		StateDir: srv.s.StateDir(), StoreDir: srv.s.StoreDir(), Mode: string(srv.s.Mode()),
		LinksMinSize: srv.s.LinksMinSize(), PID: os.Getpid(),
	})
}

// StoreInfo describes the store a daemon serves.
type StoreInfo struct {
	StateDir     string `json:"stateDir"`
	StoreDir     string `json:"storeDir"`
	Mode         string `json:"mode"`
	LinksMinSize int64  `json:"linksMinSize,omitempty"`
	PID          int    `json:"pid"`
}

type pathsBody struct {
	Paths []string `json:"paths"`
}

func readPaths(r *http.Request) ([]string, error) {
	var b pathsBody
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(&b); err != nil {
		return nil, fmt.Errorf("bad request body: %w", err)
	}
	return b.Paths, nil
}

func (srv *Server) handleRefs(w http.ResponseWriter, r *http.Request) {
	refs, err := readPaths(r)
	if err == nil {
		err = srv.s.ResolveRefs(refs)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// AddResult is the reply to add and import.
type AddResult struct {
	Path  string          `json:"path"`
	Dedup *cas.DedupStats `json:"dedup,omitempty"`
}

func importOptions(r *http.Request) store.ImportOptions {
	q := r.URL.Query()
	o := store.ImportOptions{Name: q.Get("name"), Refs: q["ref"], NoDedup: q.Get("nodedup") == "1", Root: q.Get("root"),
		Path: q.Get("path"), Deriver: q.Get("deriver"), CA: q.Get("ca"), NarHash: q.Get("narhash")}
	o.NarSize, _ = strconv.ParseInt(q.Get("narsize"), 10, 64)
	return o
}

func (srv *Server) handleRoots(w http.ResponseWriter, r *http.Request) {
	roots, err := srv.s.Roots()
	if err != nil {
		writeError(w, err)
		return
	}
	if roots == nil {
		roots = []store.Root{}
	}
	writeJSON(w, http.StatusOK, roots)
}

// RootRequest asks for a root: Name under gcroots, or with Indirect a link
// anywhere.
type RootRequest struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	Indirect bool   `json:"indirect,omitempty"`
}

func (srv *Server) handleAddRoot(w http.ResponseWriter, r *http.Request) {
	var req RootRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("bad request body: %w", err))
		return
	}
	root, err := srv.s.AddRoot(r.Context(), req.Name, req.Path, req.Indirect)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, root)
}

func (srv *Server) handleRemoveRoot(w http.ResponseWriter, r *http.Request) {
	if err := srv.s.RemoveRoot(r.URL.Query().Get("name")); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (srv *Server) handleGC(w http.ResponseWriter, r *http.Request) {
	var o store.GCOptions
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(&o); err != nil {
		writeError(w, fmt.Errorf("bad request body: %w", err))
		return
	}
	res, err := srv.s.CollectGarbage(r.Context(), o)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (srv *Server) handleAdd(w http.ResponseWriter, r *http.Request) {
	srv.ingest(w, r, srv.s.AddNAR)
}

func (srv *Server) handleImport(w http.ResponseWriter, r *http.Request) {
	srv.ingest(w, r, srv.s.Import)
}

// ingest answers add and import: the body is a NAR that ingest (AddNAR or
// Import) stores with the request's options.
func (srv *Server) ingest(w http.ResponseWriter, r *http.Request, ingest func(context.Context, io.Reader, store.ImportOptions) (string, error)) {
	o := importOptions(r)
	var st cas.DedupStats
	o.Dedup = &st
	p, err := ingest(r.Context(), r.Body, o)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, AddResult{Path: p, Dedup: &st})
}

func (srv *Server) handlePath(w http.ResponseWriter, r *http.Request) {
	o := importOptions(r)
	p, err := srv.s.PathOfNAR(r.Body, store.AddOptions{Name: o.Name, Refs: o.Refs})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, AddResult{Path: p})
}

// BundleResult is the reply to import-bundle: the paths imported, and the
// error that stopped the stream, if any.
type BundleResult struct {
	Paths []string `json:"paths"`
	Error string   `json:"error,omitempty"`
	Kind  string   `json:"kind,omitempty"`
}

func (srv *Server) handleImportBundle(w http.ResponseWriter, r *http.Request) {
	paths, err := srv.s.ImportBundle(r.Context(), r.Body, nil)
	res := BundleResult{Paths: paths}
	status := http.StatusOK
	if err != nil {
		status, res.Kind = classify(err)
		res.Error = err.Error()
	}
	if res.Paths == nil {
		res.Paths = []string{}
	}
	writeJSON(w, status, res)
}

func (srv *Server) handleExport(w http.ResponseWriter, r *http.Request) {
	sw := newStream(w, "application/x-nix-archive")
	sw.finish(srv.s.Export(r.Context(), sw, r.URL.Query().Get("path")))
}

func (srv *Server) handleExportBundle(w http.ResponseWriter, r *http.Request) {
	paths, err := readPaths(r)
	if err != nil {
		writeError(w, err)
		return
	}
	sw := newStream(w, "application/x-nix-export")
	sw.finish(srv.s.ExportBundle(r.Context(), sw, paths))
}

func (srv *Server) handlePaths(w http.ResponseWriter, r *http.Request) {
	sw := newStream(w, "text/plain; charset=utf-8")
	var werr error
	err := srv.s.List(func(p string) bool {
		_, werr = io.WriteString(sw, p+"\n")
		return werr == nil
	})
	if err == nil {
		err = werr
	}
	sw.finish(err)
}

func (srv *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	in, err := srv.s.Info(r.URL.Query().Get("path"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
}

// LookupResult is the reply to lookup: the valid path with a hash part.
type LookupResult struct {
	Path string `json:"path"`
}

func (srv *Server) handleLookup(w http.ResponseWriter, r *http.Request) {
	p, err := srv.s.LookupHashPart(r.URL.Query().Get("hash"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, LookupResult{Path: p})
}

func (srv *Server) handleClosure(w http.ResponseWriter, r *http.Request) {
	paths, err := readPaths(r)
	if err == nil {
		paths, err = srv.s.Closure(paths)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, pathsBody{Paths: paths})
}

func (srv *Server) handleCat(w http.ResponseWriter, r *http.Request) {
	sw := newStream(w, "application/octet-stream")
	sw.finish(srv.s.Cat(r.Context(), sw, r.URL.Query().Get("path")))
}

func (srv *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	rep, err := srv.s.Verify(r.Context(), store.VerifyOptions{Contents: q.Get("contents") == "1", Repair: q.Get("repair") == "1"})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (srv *Server) handleOptimise(w http.ResponseWriter, r *http.Request) {
	st, err := srv.s.Optimise(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// handleSession opens a client session: its temp roots last until the
// client disconnects (or the daemon stops). The reply is one JSON line with
// the session id; the response then stays open.
func (srv *Server) handleSession(w http.ResponseWriter, r *http.Request) {
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ses := &session{roots: srv.s.NewTempRoots(), done: make(chan struct{})}
	srv.mu.Lock()
	if srv.closing {
		srv.mu.Unlock()
		writeJSON(w, http.StatusServiceUnavailable, &apiError{Error: "daemon is stopping", Kind: kindFailed})
		return
	}
	srv.sessions[id] = ses
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.sessions, id)
		srv.mu.Unlock()
		ses.roots.Close()
	}()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	json.NewEncoder(w).Encode(map[string]string{"session": id})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	select {
	case <-r.Context().Done():
	case <-ses.done:
	}
}

func (srv *Server) closeSessions() {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.closing = true
	for _, ses := range srv.sessions {
		select {
		case <-ses.done:
		default:
			close(ses.done)
		}
	}
}
