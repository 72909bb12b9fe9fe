package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/store"
)

func newAddCommand(g *globals) *cobra.Command {
	var name string
	var refs []string
	var noDedup bool
	var root string
	var jobs int
	cmd := &cobra.Command{
		Use:   "add [--name NAME] [--ref STOREPATH]... [--no-dedup] [--root NAME] [--jobs N] PATH...",
		Short: "Add files or trees to the store; prints one store path per line",
		Long: `Add each PATH (a file, a symlink or a directory tree) to the store and print
its store path. Without --ref the path is the one 'nix-store --add' and Guix's
add-to-store give under the same store dir (recursive sha256, "source").
With --ref, each reference (which must be valid) is recorded and enters the
path's fingerprint as Nix does for sources with references.

Devices, sockets and FIFOs are refused before anything is written.

In disk mode, files of at least the store's --links-min-size are deduplicated
through <state>/store/.links as they are added: a file whose content the store
already has is hard-linked instead of written. --no-dedup turns that off.

Several PATHs are added --jobs at once (default 2); the paths are printed in
the order given, each once it and all before it are valid.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if root != "" && len(args) > 1 {
				return usagef("--root applies to one PATH, got %d", len(args))
			}
			if cmd.Flags().Changed("name") {
				if len(args) > 1 {
					return usagef("--name applies to one PATH, got %d", len(args))
				}
				if err := store.CheckName(name); err != nil {
					return err
				}
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			if jobs < 1 {
				return usagef("--jobs wants at least 1, got %d", jobs)
			}
			return addPaths(cmd.Context(), g, s, args, jobs, store.AddOptions{Name: name, Refs: refs, NoDedup: noDedup, Root: root})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "store path name (default: the base name of PATH)")
	cmd.Flags().StringArrayVar(&refs, "ref", nil, "record STOREPATH as a reference (repeatable)")
	cmd.Flags().BoolVar(&noDedup, "no-dedup", false, "disk mode: do not deduplicate through .links")
	cmd.Flags().StringVar(&root, "root", "", "also make the path a GC root <state>/gcroots/NAME (no window for a collection)")
	cmd.Flags().IntVar(&jobs, "jobs", 2, "items added at once")
	return cmd
}

// addPaths adds srcs, up to jobs at once, and prints their store paths in
// the order given as soon as each one and all before it are added: one
// item's serial steps (walking its source, moving its blobs in, the sync,
// the registration) overlap with the next one's reading and hashing. The
// first error stops the adds not yet finished; the paths printed are valid.
func addPaths(ctx context.Context, g *globals, s backend, srcs []string, jobs int, o store.AddOptions) error {
	var p *progress
	if g.interactive() {
		var total store.SourceStats
		for _, src := range srcs {
			st, _ := store.Stat(src)
			total.Files += st.Files
			total.Bytes += st.Bytes
		}
		desc := "adding " + srcs[0]
		if len(srcs) > 1 {
			desc = fmt.Sprintf("adding %d paths", len(srcs))
		}
		p = newProgress(g, desc, total.Bytes, total.Files)
	} else {
		p = newProgress(g, "", 0, 0)
	}
	defer p.done()
	o.Progress = p.hooks()

	paths := make([]string, len(srcs))
	errs := make([]error, len(srcs))
	stats := make([]cas.DedupStats, len(srcs))
	done := make([]chan struct{}, len(srcs))
	for i := range done {
		done[i] = make(chan struct{})
	}
	// A failed add stops the ones after it, never one before it: those
	// are printed as a sequential add would have printed them.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	slots := make(chan struct{}, jobs)
	go func() {
		for i, src := range srcs {
			select {
			case slots <- struct{}{}:
			case <-actx.Done():
				for ; i < len(srcs); i++ {
					errs[i] = actx.Err()
					close(done[i])
				}
				return
			}
			go func() {
				defer func() { <-slots }()
				defer close(done[i])
				opt := o
				opt.Dedup = &stats[i]
				paths[i], errs[i] = s.Add(actx, src, opt)
			}()
		}
	}()
	var err error
	for i := range srcs {
		<-done[i]
		if err != nil {
			continue // waiting for the adds after the failed one to stop
		}
		if err = errs[i]; err != nil {
			cancel()
			continue
		}
		p.clear()
		_, err = fmt.Fprintln(g.stdout, paths[i])
		if err != nil {
			cancel()
		}
	}
	var dedup cas.DedupStats
	for _, st := range stats {
		dedup.Add(st)
	}
	if dedup.Files > 0 {
		g.log.Info("deduplication", "linked", dedup.Linked, "bytesNotWritten", dedup.BytesFreed,
			"newEntries", dedup.Canonical, "skipped", dedup.Skipped, "errors", dedup.Errors)
	}
	return err
}

func newPathCommand(g *globals) *cobra.Command {
	var name string
	var refs []string
	cmd := &cobra.Command{
		Use:   "path [--name NAME] [--ref STOREPATH]... PATH",
		Short: "Print the store path PATH would get; adds nothing",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("name") {
				if err := store.CheckName(name); err != nil {
					return err
				}
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			p, err := s.PathOf(cmd.Context(), args[0], store.AddOptions{Name: name, Refs: refs})
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, p)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "store path name (default: the base name of PATH)")
	cmd.Flags().StringArrayVar(&refs, "ref", nil, "a reference (repeatable)")
	return cmd
}
