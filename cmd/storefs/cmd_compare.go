package main

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/compare"
	"github.com/storefs/storefs/store"
)

func newCompareCommand(g *globals) *cobra.Command {
	var list, keep string
	var asJSON, analyse bool
	var jobs int
	cmd := &cobra.Command{
		Use: "compare [--strategies LIST] [--json] [--keep DIR] [--jobs N] PATH...\n" +
			"  storefs compare --analyse [--strategies LIST] [--json] [--jobs N] STOREDIR",
		Short: "Measure deduplication strategies side by side on the same sources",
		Long: `Add every PATH (each one store item, as 'storefs add' does) to one fresh store
per strategy and print one row per strategy: the sources' logical bytes, the
store's bytes on disk (allocated blocks over its whole state dir, hard links
once, as du counts them) and their ratio to none's, its inodes, the files
stored (distinct contents) and deduplicated (the other files), the bytes
deduplicated (logical bytes less the sizes of the contents kept), the
metadata (registry, chunk manifests, the .links directory) and the time the
adds took.

Strategies (--strategies, comma-separated; default all, in this order):
  none        disk mode without deduplication (what cp -a costs)
  links-8192  disk mode, files of 8192 bytes and more hard-linked via .links (Guix)
  links-0     disk mode, every regular file linked (nix-store --optimise)
  blob        blob mode: each distinct file once
  chunk       chunk mode: files of 64 KiB and more as content-defined chunks

The stores are built in a temp dir under $TMPDIR and removed afterwards,
whether compare succeeds or not; --keep DIR builds them in DIR/<strategy>
and leaves them there (to inspect, or to mount the blob and chunk ones with
'storefs --state DIR/blob mount MNT'). --jobs N builds N strategies at once
(default 1: builds that run together share the disk and the CPUs, so each
one's time is no longer its own).

With --analyse, STOREDIR is an existing store dir (/nix/store, /gnu/store, a
disk store's <state>/store): its top-level entries are read, never written,
and the figures are estimates of what each strategy would use, computed from
the hashes of its files (--jobs: files hashed at once, default 2 x CPUs).

All PATHs are checked before anything is built: a missing one, a device,
socket or FIFO in a tree, or a bad name fails with exit status 1.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			strategies, err := compare.ParseStrategies(list)
			if err != nil {
				return usageError{err}
			}
			if cmd.Flags().Changed("jobs") && jobs < 1 {
				return usagef("--jobs wants at least 1, got %d", jobs)
			}
			if analyse {
				if keep != "" {
					return usagef("--keep builds stores; --analyse builds none")
				}
				if len(args) != 1 {
					return usagef("compare --analyse: want 1 store dir, got %d", len(args))
				}
				return runAnalyse(cmd, g, args[0], strategies, jobs, asJSON)
			}
			start := time.Now()
			var bar *progress
			res, err := compare.Build(cmd.Context(), args, compare.Options{
				Strategies: strategies,
				Keep:       keep,
				Jobs:       jobs,
				Logger:     g.log,
				Progress: func(files int, bytes int64) *store.Progress {
					bar = newProgress(g, fmt.Sprintf("compare: %d strategies", len(strategies)), bytes, files)
					return bar.hooks()
				},
			})
			if bar != nil {
				bar.done()
			}
			if err != nil {
				return err
			}
			if keep != "" {
				fmt.Fprintf(g.stderr, "stores kept in %s\n", keep)
			}
			g.log.Info("compare done", "took", time.Since(start))
			if asJSON {
				return printJSON(g.stdout, res)
			}
			return printCompareTable(g.stdout, res)
		},
	}
	f := cmd.Flags()
	f.StringVar(&list, "strategies", "", "comma-separated strategies (default none,links-8192,links-0,blob,chunk)")
	f.BoolVar(&asJSON, "json", false, "print the figures as JSON, one object per strategy")
	f.StringVar(&keep, "keep", "", "build the stores in DIR/<strategy> and leave them there")
	f.IntVar(&jobs, "jobs", 0, "strategies built at once (default 1); with --analyse, files hashed at once (default 2 x CPUs)")
	f.BoolVar(&analyse, "analyse", false, "estimate from an existing store dir's file hashes, read-only")
	return cmd
}

func runAnalyse(cmd *cobra.Command, g *globals, dir string, strategies []compare.Strategy, jobs int, asJSON bool) error {
	start := time.Now()
	var bar *progress
	res, an, err := compare.Analyse(cmd.Context(), dir, compare.AnalyseOptions{
		Strategies: strategies,
		Jobs:       jobs,
		Logger:     g.log,
		Progress: func(files int, bytes int64) *store.Progress {
			bar = newProgress(g, "hashing "+dir, bytes, files)
			return bar.hooks()
		},
	})
	if bar != nil {
		bar.done()
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "analysed %s: %d items, %d files (%d distinct inodes) in %.1fs; estimates, the registry not included\n",
		dir, an.Items, an.Files, an.Inodes, time.Since(start).Seconds())
	if an.Skipped > 0 {
		fmt.Fprintf(g.stderr, "skipped %d entries that are no file, directory or symlink\n", an.Skipped)
	}
	if asJSON {
		return printJSON(g.stdout, res)
	}
	return printCompareTable(g.stdout, res)
}

// printCompareTable writes one row per strategy (exact figures: --json).
func printCompareTable(w io.Writer, res []compare.Result) error {
	width := len("strategy")
	for _, r := range res {
		width = max(width, len(r.Strategy))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-*s\tlogical\ton disk\tratio\tinodes\tfiles stored\tdedup files\tdedup bytes\tmetadata\ttime\t\n", width, "strategy")
	for _, r := range res {
		ratio, took := "-", "-"
		if r.Ratio != nil {
			ratio = strconv.FormatFloat(*r.Ratio, 'f', 3, 64)
		}
		if !r.Estimated {
			took = strconv.FormatFloat(r.BuildSeconds, 'f', 2, 64) + "s"
		}
		fmt.Fprintf(tw, "%-*s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t\n", width, r.Strategy, humanBytes(r.LogicalBytes), humanBytes(r.DiskBytes), ratio,
			r.Inodes, r.FilesStored, r.FilesDeduplicated, humanBytes(r.DeduplicatedBytes), humanBytes(r.MetadataBytes), took)
	}
	return tw.Flush()
}
