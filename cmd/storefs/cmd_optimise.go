package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func newOptimiseCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "optimise [--json]",
		Short: "Deduplicate every valid item through .links hard links (disk mode)",
		Long: `Replace identical files of the valid items by hard links to one copy,
<state>/store/.links/<nix32 of the file's NAR sha256> (the names Nix and Guix
use). Files below the store's --links-min-size are left alone, as are
writable files. Deduplication failures (full directory, link limit, a race
with another process) are counted and skipped. Prints the files linked and
the bytes freed.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			st, err := s.Optimise(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.stdout, st)
			}
			fmt.Fprintf(g.stdout, "%d files linked, %s freed\n", st.Linked, humanBytes(st.BytesFreed))
			fmt.Fprintf(g.stderr, "considered %d files: %d new .links entries, %d already linked, %d skipped, %d writable skipped, %d errors\n",
				st.Files, st.Canonical, st.Already, st.Skipped, st.Writable, st.Errors)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the counts as JSON")
	return cmd
}

// printJSON writes v as indented JSON, the form every --json flag prints.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
