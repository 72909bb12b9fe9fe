package main

import (
	"bufio"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/store"
)

func newLsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List valid store paths, one per line, sorted",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			w := bufio.NewWriter(g.stdout)
			var werr error
			err = s.List(func(p string) bool {
				_, werr = fmt.Fprintln(w, p)
				return werr == nil
			})
			if err == nil {
				err = werr
			}
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
}

func newInfoCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info [--json] STOREPATH...",
		Short: "Show NAR hash and size, references, referrers, deriver and registration time",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			var infos []*store.Info
			for _, p := range args {
				in, err := s.Info(p)
				if err != nil {
					return err
				}
				infos = append(infos, in)
			}
			if asJSON {
				return printJSON(g.stdout, infos)
			}
			for i, in := range infos {
				if i > 0 {
					fmt.Fprintln(g.stdout)
				}
				fmt.Fprintf(g.stdout, "path: %s\nnarHash: %s\nnarSize: %d\nreferences: %s\nreferrers: %s\nderiver: %s\nregistrationTime: %s\n",
					in.Path, in.NarHash, in.NarSize, strings.Join(in.References, " "), strings.Join(in.Referrers, " "),
					in.Deriver, in.RegistrationTime.Format(time.RFC3339))
				if in.CA != "" {
					fmt.Fprintf(g.stdout, "ca: %s\n", in.CA)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

func newClosureCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "closure STOREPATH...",
		Short: "Print the requisites of the paths (references, transitively; dependencies first)",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			c, err := s.Closure(args)
			if err != nil {
				return err
			}
			for _, p := range c {
				fmt.Fprintln(g.stdout, p)
			}
			return nil
		},
	}
}

func newCatCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cat STOREPATH[/REL/PATH]",
		Short: "Write a file's bytes to stdout (in either mode)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			w := bufio.NewWriterSize(g.stdout, 1<<16)
			err = s.Cat(cmd.Context(), w, args[0])
			if ferr := w.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
}
