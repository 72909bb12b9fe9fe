package main

import (
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
	cmd := &cobra.Command{
		Use:   "add [--name NAME] [--ref STOREPATH]... [--no-dedup] [--root NAME] PATH...",
		Short: "Add files or trees to the store; prints one store path per line",
		Long: `Add each PATH (a file, a symlink or a directory tree) to the store and print
its store path. Without --ref the path is the one 'nix-store --add' and Guix's
add-to-store give under the same store dir (recursive sha256, "source").
With --ref, each reference (which must be valid) is recorded and enters the
path's fingerprint as Nix does for sources with references.

Devices, sockets and FIFOs are refused before anything is written.

In disk mode, files of at least the store's --links-min-size are deduplicated
through <state>/store/.links as they are added: a file whose content the store
already has is hard-linked instead of written. --no-dedup turns that off.`,
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
			var dedup cas.DedupStats
			defer func() {
				if dedup.Files > 0 {
					g.log.Info("deduplication", "linked", dedup.Linked, "bytesNotWritten", dedup.BytesFreed,
						"newEntries", dedup.Canonical, "skipped", dedup.Skipped, "errors", dedup.Errors)
				}
			}()
			for _, src := range args {
				var p *progress
				if g.interactive() {
					st, _ := store.Stat(src)
					p = newProgress(g, "adding "+src, st.Bytes, st.Files)
				} else {
					p = newProgress(g, "", 0, 0)
				}
				path, err := s.Add(cmd.Context(), src, store.AddOptions{Name: name, Refs: refs, Progress: p.hooks(), NoDedup: noDedup, Dedup: &dedup, Root: root})
				p.done()
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, path)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "store path name (default: the base name of PATH)")
	cmd.Flags().StringArrayVar(&refs, "ref", nil, "record STOREPATH as a reference (repeatable)")
	cmd.Flags().BoolVar(&noDedup, "no-dedup", false, "disk mode: do not deduplicate through .links")
	cmd.Flags().StringVar(&root, "root", "", "also make the path a GC root <state>/gcroots/NAME (no window for a collection)")
	return cmd
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
