package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/errgroup"

	"github.com/storefs/storefs/store"
)

// WriteOptions configure WriteDir.
type WriteOptions struct {
	StoreDir    string
	Compression string               // none, xz (default, as nix copy) or zstd
	SignKey     *signature.SecretKey // if set, signs every narinfo written
	Jobs        int                  // NARs compressed at once (default 2)
	Logger      *slog.Logger
}

// WriteDir writes the closure of paths into dir as a static binary cache,
// the layout `nix copy --to file://DIR` makes: nix-cache-info,
// <hash32>.narinfo, nar/<nix32 FileHash>.nar[.xz|.zst]. Items whose narinfo
// is there already are left alone (as Nix does). Each NAR is written to a
// temporary file and renamed; each narinfo is written (atomically) after its
// NAR and after the narinfos of its references, so a reader of a cache
// being written never finds a narinfo whose NAR or references are missing.
// It returns the paths it wrote, references first.
func WriteDir(ctx context.Context, src Source, dir string, paths []string, o WriteOptions) ([]string, error) {
	if o.Compression == "" {
		o.Compression = "xz"
	}
	if err := CheckCompression(o.Compression); err != nil {
		return nil, err
	}
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		return nil, err
	}
	ciName := filepath.Join(dir, "nix-cache-info")
	if f, err := os.Open(ciName); err == nil {
		ci, err := ParseCacheInfo(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ciName, err)
		}
		if ci.StoreDir != o.StoreDir {
			return nil, fmt.Errorf("%s is a cache for store dir %s, not %s", dir, ci.StoreDir, o.StoreDir)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	} else if err := writeFileAtomic(ciName, []byte(CacheInfo{StoreDir: o.StoreDir}.String())); err != nil {
		return nil, err
	}
	closure, err := src.Closure(paths) // references first
	if err != nil {
		return nil, err
	}
	type job struct {
		in   *store.Info
		url  string
		fi   fileInfo
		err  error
		done chan struct{}
	}
	var jobs []*job
	for _, p := range closure {
		if _, err := os.Lstat(filepath.Join(dir, hashPart(p)+".narinfo")); err == nil {
			continue
		}
		in, err := src.Info(p)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, &job{in: in, done: make(chan struct{})})
	}
	// Jobs workers take the items in closure order; this goroutine writes
	// the narinfos in that order as their NARs are done.
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	queue := make(chan *job)
	for range o.Jobs {
		g.Go(func() error {
			for j := range queue {
				j.url, j.fi, j.err = writeDirNAR(gctx, src, j.in, o.Compression, dir)
				close(j.done)
				if j.err != nil {
					return j.err
				}
			}
			return nil
		})
	}
	go func() {
		defer close(queue)
		for _, j := range jobs {
			select {
			case queue <- j:
			case <-gctx.Done():
				return
			}
		}
	}()
	defer func() {
		cancel()
		g.Wait()
	}()
	var written []string
	for _, j := range jobs {
		select {
		case <-j.done:
		case <-gctx.Done():
			if err := g.Wait(); err != nil {
				return written, err
			}
			return written, ctx.Err()
		}
		if j.err != nil {
			return written, j.err
		}
		ni, err := NewNarInfo(j.in)
		if err != nil {
			return written, err
		}
		ni.URL, ni.Compression = j.url, o.Compression
		ni.FileHash = nixhash.MustNewHashWithEncoding(nixhash.SHA256, j.fi.hash[:], nixhash.NixBase32, true)
		ni.FileSize = uint64(j.fi.size)
		if o.SignKey != nil {
			if err := Sign(o.StoreDir, ni, *o.SignKey); err != nil {
				return written, err
			}
		}
		if err := writeFileAtomic(filepath.Join(dir, hashPart(j.in.Path)+".narinfo"), []byte(ni.String())); err != nil {
			return written, err
		}
		log.Debug("copied", "path", j.in.Path, "url", ni.URL, "fileSize", ni.FileSize)
		written = append(written, j.in.Path)
	}
	return written, nil
}

// writeDirNAR writes in's NAR file into dir/nar under its file hash and
// returns its URL (relative to dir).
func writeDirNAR(ctx context.Context, src Source, in *store.Info, comp, dir string) (string, fileInfo, error) {
	tmp, fi, err := writeNARFile(ctx, src, in, comp, filepath.Join(dir, "nar"))
	if err != nil {
		return "", fi, err
	}
	url := "nar/" + nixbase32.EncodeToString(fi.hash[:]) + fileExt(comp)
	if err := os.Chmod(tmp, 0o644); err == nil {
		err = os.Rename(tmp, filepath.Join(dir, url))
	}
	if err != nil {
		os.Remove(tmp)
		return "", fi, err
	}
	return url, fi, nil
}
