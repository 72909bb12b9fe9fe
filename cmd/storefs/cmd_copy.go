package main

import (
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/cache"
)

func newCopyCommand(g *globals) *cobra.Command {
	var to, signKey, compression string
	var jobs int
	cmd := &cobra.Command{
		Use:   "copy --to file://DIR [--sign-key FILE] [--compression none|xz|zstd] STOREPATH...",
		Short: "Write store paths and their closures as a static binary cache",
		Long: `Write each STOREPATH and its closure into DIR as a binary cache, in the
layout 'nix copy --to file://DIR' makes (nix-cache-info, <hash>.narinfo,
nar/<filehash>.nar.xz): any web server can serve DIR, and Nix ('nix copy
--from file://DIR', substituters = ...) and 'storefs substitute' read it.
Items already in DIR are left alone; print the paths written, references
first. --compression is xz by default, as for nix copy. --sign-key signs the
narinfos.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := url.Parse(to)
			if to == "" || err != nil || u.Scheme != "file" || u.Host != "" || u.Path == "" {
				return usagef("copy needs --to file:///absolute/dir (got %q)", to)
			}
			if err := cache.CheckCompression(compression); err != nil {
				return usageError{err}
			}
			sk, err := signKeyFlag(signKey)
			if err != nil {
				return err
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			written, err := cache.WriteDir(cmd.Context(), s, u.Path, args, cache.WriteOptions{
				StoreDir: s.StoreDir(), Compression: compression, SignKey: sk, Jobs: jobs, Logger: g.log,
			})
			for _, p := range written {
				fmt.Fprintln(g.stdout, p)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the cache to write: file:///absolute/dir")
	cmd.Flags().StringVar(&signKey, "sign-key", "", "sign narinfos with the secret key in FILE")
	cmd.Flags().StringVar(&compression, "compression", "xz", "NAR compression: none, xz or zstd")
	cmd.Flags().IntVar(&jobs, "jobs", 2, "NARs compressed at once")
	return cmd
}
