package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/store"
)

func newRootsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "root",
		Short: "Manage GC roots (<state>/gcroots)",
	}
	var indirect bool
	add := &cobra.Command{
		Use:   "add [--indirect] NAME|LINK STOREPATH",
		Short: "Make STOREPATH a permanent GC root",
		Long: `Make STOREPATH a permanent GC root: <state>/gcroots/NAME -> STOREPATH.
With --indirect, LINK (a path anywhere) is made a symlink to STOREPATH and
registered under <state>/gcroots/auto, as Nix's indirect roots: the path stays
alive while LINK points at it; when LINK is removed the root goes stale and
is cleared by the next collection.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.open()
			if err != nil {
				return err
			}
			defer b.Close()
			r, err := b.AddRoot(cmd.Context(), args[0], args[1], indirect)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s -> %s\n", r.Link, r.Path)
			return nil
		},
	}
	add.Flags().BoolVar(&indirect, "indirect", false, "LINK is a symlink anywhere, registered under gcroots/auto")
	remove := &cobra.Command{
		Use:   "remove NAME|LINK",
		Short: "Remove a GC root (an indirect root's LINK itself is left alone)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.open()
			if err != nil {
				return err
			}
			defer b.Close()
			return b.RemoveRoot(args[0])
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the GC roots: LINK -> STOREPATH",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.open()
			if err != nil {
				return err
			}
			defer b.Close()
			roots, err := b.Roots()
			if err != nil {
				return err
			}
			for _, r := range roots {
				fmt.Fprintf(g.stdout, "%s -> %s\n", r.Link, r.Path)
			}
			return nil
		},
	}
	cmd.AddCommand(add, remove, list)
	return cmd
}

func newGCCommand(g *globals) *cobra.Command {
	var o struct {
		dryRun, printRoots, printLive, printDead, runtime, asJSON bool
		maxFreed                                                  string
	}
	cmd := &cobra.Command{
		Use:   "gc [--dry-run] [--max-freed SIZE] [--print-roots|--print-live|--print-dead]",
		Short: "Delete the store paths no root keeps alive",
		Long: `Collect garbage: every valid path that is not reachable, through references,
from a GC root (<state>/gcroots, direct and indirect), a temp root of a
running storefs process or daemon request, or (with --runtime-roots) a path
a running process uses, is deleted, referrers first, each removed from the
registry before its files; then unused .links entries (disk mode) or blobs no
valid tree names (blob mode) are removed. A mounted store drops the paths at
once. Prints "N store paths deleted, X freed".

--max-freed SIZE (bytes, or with K, M, G, T) stops once that much was
deleted; --dry-run, --print-dead, --print-live and --print-roots delete
nothing.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, f := range []bool{o.printRoots, o.printLive, o.printDead} {
				if f {
					n++
				}
			}
			if n > 1 {
				return usagef("--print-roots, --print-live and --print-dead exclude each other")
			}
			var max int64
			if o.maxFreed != "" {
				if o.dryRun || n > 0 {
					return usagef("--max-freed makes no sense with --dry-run or --print-*")
				}
				v, err := parseSize(o.maxFreed)
				if err != nil {
					return usageError{err}
				}
				max = v
			}
			b, err := g.open()
			if err != nil {
				return err
			}
			defer b.Close()
			res, err := b.CollectGarbage(cmd.Context(), store.GCOptions{DryRun: o.dryRun || n > 0, MaxFreed: max, RuntimeRoots: o.runtime})
			if err != nil {
				return err
			}
			switch {
			case o.asJSON:
				return printJSON(g.stdout, res)
			case o.printRoots:
				for _, r := range res.Roots {
					fmt.Fprintf(g.stdout, "%s -> %s\n", r.Link, r.Path)
				}
			case o.printLive:
				for _, p := range res.Live {
					fmt.Fprintln(g.stdout, p)
				}
			case o.printDead, o.dryRun:
				for _, p := range res.Dead {
					fmt.Fprintln(g.stdout, p)
				}
			default:
				fmt.Fprintf(g.stdout, "%d store paths deleted, %s freed\n", len(res.Deleted), humanBytes(res.Freed))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.dryRun, "dry-run", false, "print the paths that would be deleted; delete nothing")
	f.StringVar(&o.maxFreed, "max-freed", "", "stop after deleting this much (e.g. 500M)")
	f.BoolVar(&o.printRoots, "print-roots", false, "print the roots: LINK -> STOREPATH")
	f.BoolVar(&o.printLive, "print-live", false, "print the live paths")
	f.BoolVar(&o.printDead, "print-dead", false, "print the dead paths")
	f.BoolVar(&o.runtime, "runtime-roots", false, "also keep paths running processes use (exe, cwd, open files, mappings)")
	f.BoolVar(&o.asJSON, "json", false, "print the whole result as JSON")
	return cmd
}

func newDeleteCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete STOREPATH...",
		Short: "Delete specific store paths, refused while they are alive",
		Long: `Delete the given paths (and the dead paths that refer to them), like
nix-store --delete: a path reachable from a root is refused with "cannot delete
path ... since it is still alive", and nothing is deleted.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.open()
			if err != nil {
				return err
			}
			defer b.Close()
			res, err := b.CollectGarbage(cmd.Context(), store.GCOptions{Paths: args})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%d store paths deleted, %s freed\n", len(res.Deleted), humanBytes(res.Freed))
			return nil
		},
	}
}

// parseSize reads "1234", "10K", "500M", "2G", "1T" (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSpace(s))
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	case strings.HasSuffix(t, "T"):
		mult, t = 1<<40, t[:len(t)-1]
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 1048576, 500M, 2G)", s)
	}
	return v * mult, nil
}
