package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/singleflight"

	"github.com/storefs/storefs/store"
)

// HandlerOptions configure a Handler.
type HandlerOptions struct {
	StoreDir    string // the store's store dir (nix-cache-info's StoreDir)
	Priority    int    // nix-cache-info's Priority (0: none given; Nix's default is 50)
	Compression string // none (default), xz or zstd
	// SignKey, if set, signs every narinfo.
	SignKey *signature.SecretKey
	// CacheDir holds the compressed NARs (xz, zstd): one file per NAR hash
	// and compression plus its FileHash and FileSize. Entries never go stale
	// (a NAR hash names its contents), so the directory may be removed at
	// any time; it is not pruned. Required unless Compression is none.
	CacheDir string
	Logger   *slog.Logger
}

// Handler serves a store as a Nix binary cache: GET and HEAD of
// /nix-cache-info, /<hash32>.narinfo and /nar/<hash32>-<narhash32>.nar[.xz|.zst]
// (the NAR hash in the URL makes a URL name one content, as nix-serve does);
// 404 for anything else or an item that is not (or no longer) valid. It
// serves concurrent clients; it keeps no per-item state in memory.
type Handler struct {
	src  Source
	o    HandlerOptions
	log  *slog.Logger
	info []byte // nix-cache-info
	sf   singleflight.Group
}

// NewHandler returns a Handler serving src.
func NewHandler(src Source, o HandlerOptions) (*Handler, error) {
	if o.Compression == "" {
		o.Compression = "none"
	}
	if err := CheckCompression(o.Compression); err != nil {
		return nil, err
	}
	if o.Compression != "none" {
		if o.CacheDir == "" {
			return nil, fmt.Errorf("compression %s needs a cache dir for the compressed NARs", o.Compression)
		}
		if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
			return nil, err
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ci := CacheInfo{StoreDir: o.StoreDir, WantMassQuery: true, Priority: o.Priority}
	return &Handler{src: src, o: o, log: log, info: []byte(ci.String())}, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	switch {
	case p == "/nix-cache-info":
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		w.Header().Set("Content-Length", strconv.Itoa(len(h.info)))
		if r.Method == http.MethodGet {
			w.Write(h.info)
		}
	case strings.HasSuffix(p, ".narinfo") && !strings.Contains(p[1:], "/"):
		h.serveNarInfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
	case strings.HasPrefix(p, "/nar/"):
		h.serveNAR(w, r, strings.TrimPrefix(p, "/nar/"))
	default:
		http.NotFound(w, r)
	}
}

// fail answers an error: 404 for a path that is not valid (Nix: "not in
// the cache"), else 500, logged.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, store.ErrNotValid) {
		http.Error(w, "not in this cache", http.StatusNotFound)
		return
	}
	h.log.Error("serving", "url", r.URL.Path, "err", err)
	http.Error(w, "internal error", http.StatusInternalServerError)
}

func (h *Handler) lookup(hash32 string) (*store.Info, error) {
	if len(hash32) != store.HashPartLen || nixbase32.ValidateString(hash32) != nil {
		return nil, fmt.Errorf("%q: %w", hash32, store.ErrNotValid)
	}
	p, err := h.src.LookupHashPart(hash32)
	if err != nil {
		return nil, err
	}
	return h.src.Info(p)
}

func (h *Handler) serveNarInfo(w http.ResponseWriter, r *http.Request, hash32 string) {
	in, err := h.lookup(hash32)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ni, err := h.narInfo(r, in)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	text := ni.String()
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Header().Set("Content-Length", strconv.Itoa(len(text)))
	if r.Method == http.MethodGet {
		io.WriteString(w, text)
	}
}

// narInfo is the narinfo the handler gives for in: for compression none at
// once, else after compressing the NAR into the cache dir if it is not
// there yet.
func (h *Handler) narInfo(r *http.Request, in *store.Info) (*narinfo.NarInfo, error) {
	ni, err := NewNarInfo(in)
	if err != nil {
		return nil, err
	}
	ni.URL = "nar/" + hashPart(in.Path) + "-" + narHash32(ni) + fileExt(h.o.Compression)
	ni.Compression = h.o.Compression
	if h.o.Compression == "none" {
		ni.FileHash, ni.FileSize = ni.NarHash, ni.NarSize
	} else {
		fi, _, err := h.compressed(r, in, narHash32(ni))
		if err != nil {
			return nil, err
		}
		ni.FileHash = nixhash.MustNewHashWithEncoding(nixhash.SHA256, fi.hash[:], nixhash.NixBase32, true)
		ni.FileSize = uint64(fi.size)
	}
	if h.o.SignKey != nil {
		if err := Sign(h.o.StoreDir, ni, *h.o.SignKey); err != nil {
			return nil, err
		}
	}
	return ni, nil
}

// compressed returns the cache dir's compressed NAR of in (file name and
// what the narinfo says of it), making it first if need be: one streaming
// pass of the NAR through the compressor into a temporary file, renamed
// when complete. Concurrent requests for one NAR share that pass.
func (h *Handler) compressed(r *http.Request, in *store.Info, nar32 string) (fileInfo, string, error) {
	name := filepath.Join(h.o.CacheDir, nar32+fileExt(h.o.Compression))
	if fi, err := readFileInfo(name + ".info"); err == nil {
		return fi, name, nil
	}
	v, err, _ := h.sf.Do(name, func() (any, error) {
		if fi, err := readFileInfo(name + ".info"); err == nil {
			return fi, nil
		}
		// Not the request's context: a client that goes away must not
		// waste the others' (shared) work.
		tmp, fi, err := writeNARFile(context.WithoutCancel(r.Context()), h.src, in, h.o.Compression, h.o.CacheDir)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(tmp, 0o644); err != nil {
			os.Remove(tmp)
			return nil, err
		}
		if err := os.Rename(tmp, name); err != nil {
			os.Remove(tmp)
			return nil, err
		}
		h.log.Debug("compressed", "path", in.Path, "compression", h.o.Compression, "narSize", in.NarSize, "fileSize", fi.size)
		return fi, writeFileAtomic(name+".info", []byte(fmt.Sprintf("%s %d\n", fi.hashString(), fi.size)))
	})
	if err != nil {
		return fileInfo{}, "", err
	}
	return v.(fileInfo), name, nil
}

// readFileInfo reads the "sha256:<nix32> <size>" file written next to a
// compressed NAR once it is complete.
func readFileInfo(name string) (fileInfo, error) {
	var fi fileInfo
	b, err := os.ReadFile(name)
	if err != nil {
		return fi, err
	}
	hs, ss, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	h, herr := nixhash.ParseAny(hs, nil)
	n, serr := strconv.ParseInt(ss, 10, 64)
	if !ok || herr != nil || serr != nil || h.Algo() != nixhash.SHA256 {
		return fi, fmt.Errorf("%s: corrupt", name)
	}
	copy(fi.hash[:], h.Digest())
	fi.size = n
	return fi, nil
}

func (h *Handler) serveNAR(w http.ResponseWriter, r *http.Request, file string) {
	ext := fileExt(h.o.Compression)
	stem, ok := strings.CutSuffix(file, ext)
	hash32, nar32, ok2 := strings.Cut(stem, "-")
	if !ok || !ok2 || strings.Contains(stem, ".") {
		http.NotFound(w, r)
		return
	}
	in, err := h.lookup(hash32)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ni, err := NewNarInfo(in)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if narHash32(ni) != nar32 {
		http.Error(w, "incorrect NAR hash (the item changed?)", http.StatusNotFound)
		return
	}
	if h.o.Compression != "none" {
		_, name, err := h.compressed(r, in, nar32)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		f, err := os.Open(name)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/x-nix-nar")
		http.ServeContent(w, r, "", time.Time{}, f) // HEAD and Range too
		return
	}
	w.Header().Set("Content-Type", "application/x-nix-nar")
	w.Header().Set("Content-Length", strconv.FormatInt(in.NarSize, 10))
	if r.Method == http.MethodHead {
		return
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	err = h.src.Export(r.Context(), bw, in.Path)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil && r.Context().Err() == nil {
		// The status is sent: the client sees a short body and refuses it.
		h.log.Error("streaming a NAR", "path", in.Path, "err", err)
	}
}
