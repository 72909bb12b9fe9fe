package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/store"
)

func newVerifyCommand(g *globals) *cobra.Command {
	var contents, asJSON, repair bool
	cmd := &cobra.Command{
		Use:   "verify [--contents] [--repair] [--json]",
		Short: "Check registry invariants and contents; exit 3 if problems are found",
		Long: `Check the registry's invariants (references valid, refs and referrers mirrored,
every tree record present) and that every valid path's contents are present.
With --contents, also recompute every item's NAR hash and every blob's key
(blob names are nix32 sha256 of the file's NAR) and every .links entry's name.
--repair removes the registrations of items whose contents are gone when
nothing valid refers to them, and .links entries whose content changed; each
repair is reported. Exit status 3 means problems remain.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			p := newProgress(g, "verifying", -1, 0)
			rep, err := s.Verify(cmd.Context(), store.VerifyOptions{Contents: contents, Repair: repair, Progress: p.hooks()})
			p.done()
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(g.stdout, rep); err != nil {
					return err
				}
			} else {
				for _, r := range rep.Repaired {
					fmt.Fprintln(g.stdout, "repaired: "+r)
				}
				for _, pr := range rep.Problems {
					fmt.Fprintln(g.stdout, pr)
				}
				what := "paths"
				if contents {
					what = "paths and their contents"
				}
				fmt.Fprintf(g.stderr, "checked %d %s: %d problem(s)\n", rep.Paths, what, len(rep.Problems))
			}
			if len(rep.Problems) > 0 {
				return problemsError{len(rep.Problems)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&contents, "contents", false, "recompute NAR hashes and blob keys")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&repair, "repair", false, "remove registrations whose contents are gone (when nothing valid refers to them) and corrupted .links entries")
	return cmd
}
