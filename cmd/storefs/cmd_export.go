package main

import (
	"bufio"

	"github.com/spf13/cobra"
)

func newExportCommand(g *globals) *cobra.Command {
	var bundle bool
	cmd := &cobra.Command{
		Use:   "export STOREPATH | export --bundle STOREPATH...",
		Short: "Write an item's NAR (or a nix-store --export bundle) to stdout",
		Long: `Write the NAR of a valid store path to stdout: byte-identical to
'nix-store --dump' of the tree that was added. With --bundle, write the paths
in 'nix-store --export' format (references first), which 'nix-store --import'
and 'storefs import --bundle' read.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !bundle && len(args) != 1 {
				return usagef("export takes one STOREPATH (use --bundle for several)")
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			w := bufio.NewWriterSize(g.stdout, 1<<16)
			if bundle {
				err = s.ExportBundle(cmd.Context(), w, args)
			} else {
				err = s.Export(cmd.Context(), w, args[0])
			}
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&bundle, "bundle", false, "write nix-store --export format")
	return cmd
}
