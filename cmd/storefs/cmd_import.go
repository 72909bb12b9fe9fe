package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/store"
)

func newImportCommand(g *globals) *cobra.Command {
	var name string
	var refs []string
	var bundle bool
	cmd := &cobra.Command{
		Use:   "import [--name NAME] [--ref STOREPATH]... [FILE] | import --bundle [FILE]",
		Short: "Add a NAR (or a nix-store --export bundle) from FILE or stdin",
		Long: `Read one NAR from FILE (stdin when FILE is absent or "-") and add it like 'add'
would add the tree it holds; print the store path. The name defaults to FILE's
base name without ".nar"; from stdin --name is required.

The NAR is checked strictly: unsorted or duplicate entries, bad names, non-zero
padding, a misplaced or non-empty executable marker, an empty symlink target,
unknown node types, a bad magic, truncation and trailing bytes are refused with
an error naming the offset and entry, and the store is left as it was.

With --bundle, read a 'nix-store --export' stream (Guix's 'guix archive
--export' too) and add each item under the path it names, keeping its
references and deriver; print the paths.`,
		Args: maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bundle && (cmd.Flags().Changed("name") || len(refs) > 0) {
				return usagef("--bundle takes names and references from the stream; drop --name/--ref")
			}
			if cmd.Flags().Changed("name") {
				if err := store.CheckName(name); err != nil {
					return err
				}
			}
			var in io.Reader = os.Stdin
			src := "-"
			if len(args) == 1 && args[0] != "-" {
				src = args[0]
				f, err := os.Open(src)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			in = bufio.NewReaderSize(in, 1<<16)
			if bundle {
				s, err := g.open()
				if err != nil {
					return err
				}
				defer s.Close()
				p := newProgress(g, "importing", -1, 0)
				paths, err := s.ImportBundle(cmd.Context(), in, p.hooks())
				p.done()
				for _, path := range paths {
					fmt.Fprintln(g.stdout, path)
				}
				return err
			}
			if name == "" {
				if src == "-" {
					return usagef("import from stdin needs --name")
				}
				name = strings.TrimSuffix(filepath.Base(src), ".nar")
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			p := newProgress(g, "importing", -1, 0)
			path, err := s.Import(cmd.Context(), in, store.ImportOptions{Name: name, Refs: refs, Progress: p.hooks()})
			p.done()
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "store path name")
	cmd.Flags().StringArrayVar(&refs, "ref", nil, "record STOREPATH as a reference (repeatable)")
	cmd.Flags().BoolVar(&bundle, "bundle", false, "read a nix-store --export stream")
	return cmd
}
