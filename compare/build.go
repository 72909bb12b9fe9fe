package compare

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/storefs/storefs/store"
)

// Options configure Build.
type Options struct {
	Strategies []Strategy // All when empty
	// Keep, if set, is a directory to build the stores in (Keep/<strategy>,
	// which must not exist yet) and leave them; otherwise they are built in
	// a temp dir under TempDir and removed whatever happens.
	Keep    string
	TempDir string // parent of the temp dir; os.TempDir() when empty
	// Jobs is how many strategies are built at once (1 when < 1). With more
	// than one the builds compete for the disk and the CPUs, so their build
	// times are no longer each strategy's own.
	Jobs   int
	Logger *slog.Logger
	// Progress, if set, is called once the sources are checked, with the
	// files and bytes all the adds will hash, and returns the hooks they
	// report to (called from several goroutines at once).
	Progress func(files int, bytes int64) *store.Progress
}

// Build adds every path (each one store item, as `storefs add` does) to one
// fresh store per strategy and returns each store's figures, in the order
// of the strategies. All paths are checked (present, a valid name, no
// device, socket or FIFO) before anything is built.
func Build(ctx context.Context, paths []string, o Options) (_ []Result, err error) {
	strategies := o.Strategies
	if len(strategies) == 0 {
		strategies = All()
	}
	if len(paths) == 0 {
		return nil, errors.New("compare: no paths")
	}
	src, err := checkSources(paths)
	if err != nil {
		return nil, err
	}
	root := o.Keep
	if root == "" {
		if root, err = os.MkdirTemp(o.TempDir, "storefs-compare-"); err != nil {
			return nil, fmt.Errorf("compare: %w", err)
		}
		defer func() {
			if rerr := removeTree(root); rerr != nil && err == nil {
				err = fmt.Errorf("compare: removing the temp stores: %w", rerr)
			}
		}()
	} else {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, fmt.Errorf("compare: %w", err)
		}
		for _, s := range strategies {
			if _, err := os.Lstat(filepath.Join(root, string(s))); err == nil {
				return nil, fmt.Errorf("compare: %s already exists; --keep wants a directory without it", filepath.Join(root, string(s)))
			}
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var prog *store.Progress
	if o.Progress != nil {
		n := int64(len(strategies))
		prog = o.Progress(int(src.files*n), src.bytes*n)
	}
	results := make([]Result, len(strategies))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(o.Jobs, 1))
	for i, s := range strategies {
		g.Go(func() error {
			r, err := build(gctx, s, filepath.Join(root, string(s)), paths, src, log, prog)
			if err != nil {
				return fmt.Errorf("compare %s: %w%s", s, err, hint(err, root))
			}
			if o.Keep != "" {
				r.State = filepath.Join(root, string(s))
			}
			results[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	setRatios(results)
	return results, nil
}

// hint names the likely cause of a failed build where the error alone may
// not make it plain.
func hint(err error, root string) string {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Sprintf(" (the stores are built in %s: make room there, or set TMPDIR or --keep elsewhere)", root)
	}
	return ""
}

// build makes one strategy's store in state, adds the paths, closes it and
// measures it.
func build(ctx context.Context, s Strategy, state string, paths []string, src sourceFacts, log *slog.Logger, prog *store.Progress) (Result, error) {
	r := Result{Strategy: s}
	st, err := store.Init(state, s.initOptions(), store.Options{Logger: log.With("strategy", string(s))})
	if err != nil {
		return r, err
	}
	start := time.Now()
	for _, p := range paths {
		if _, err := st.Add(ctx, p, store.AddOptions{NoDedup: s == None, Progress: prog}); err != nil {
			st.Close()
			return r, err
		}
	}
	r.BuildSeconds = time.Since(start).Seconds()
	if err := st.Close(); err != nil {
		return r, err
	}
	return r, measure(state, s, src, &r)
}

// checkSources checks every path as Add would before anything is built, and
// counts their regular files and bytes.
func checkSources(paths []string) (sourceFacts, error) {
	var src sourceFacts
	for _, p := range paths {
		if err := store.CheckSource(p); err != nil {
			return src, fmt.Errorf("compare: %w", err)
		}
		if _, err := store.SourceName(p, ""); err != nil {
			return src, fmt.Errorf("compare %s: %w", p, err)
		}
		err := filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			src.files++
			src.bytes += fi.Size()
			if fi.Size() == 0 {
				src.empty[boolIndex(fi.Mode()&0o100 != 0)] = true
			}
			return nil
		})
		if err != nil {
			return src, fmt.Errorf("compare: %w", err)
		}
	}
	return src, nil
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}
