package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/spf13/cobra"

	"github.com/storefs/storefs/cache"
)

func newSubstituteCommand(g *globals) *cobra.Command {
	var from string
	var keys []string
	var noCheckSigs bool
	var jobs int
	var stall time.Duration
	cmd := &cobra.Command{
		Use:   "substitute --from URL [--trusted-key KEY]... [--no-check-sigs] STOREPATH...",
		Short: "Fetch store paths and their closures from a binary cache",
		Long: `Fetch each STOREPATH and its closure from the binary cache at URL
(http://, https:// or file://; 'nix copy --to file://DIR', 'storefs serve',
'storefs copy' or nix-serve) and add them to the store under their own paths,
with their references and deriver; print the paths added, references first.
Paths the store holds already are skipped. The cache's StoreDir must be the
store's.

Every narinfo must carry a valid signature by a --trusted-key (a public key
NAME:base64, or a file holding one; repeatable) unless --no-check-sigs.
Every NAR is downloaded (--jobs at a time), checked against the narinfo's
FileSize, FileHash, NarSize and NarHash, and kept decompressed in $TMPDIR
until the whole closure is checked; only then are the items imported, each
one atomically. So a download that is truncated, corrupt, wrongly signed or
wrongly hashed is refused with an error and the store is left as it was.
Server errors (5xx), cut connections and downloads that send nothing for
--stall-timeout are retried (5 attempts, backoff from 0.5 s); "not in the
cache" (404) is not.`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" {
				return usagef("substitute needs --from URL")
			}
			if err := cache.CheckURL(from); err != nil {
				return usageError{err}
			}
			if !noCheckSigs && len(keys) == 0 {
				return usagef("substitute needs a --trusted-key (or --no-check-sigs to accept unsigned paths)")
			}
			var trusted []signature.PublicKey
			for _, k := range keys {
				pk, err := trustedKey(k)
				if err != nil {
					return usageError{err}
				}
				trusted = append(trusted, pk)
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			defer s.Close()
			sub, err := cache.NewSubstituter(cache.SubstituteOptions{
				URL: from, StoreDir: s.StoreDir(), TrustedKeys: trusted, NoCheckSigs: noCheckSigs,
				Jobs: jobs, StallTimeout: stall, Logger: g.log,
			})
			if err != nil {
				return err
			}
			done, err := sub.Substitute(cmd.Context(), s, args)
			for _, p := range done {
				fmt.Fprintln(g.stdout, p)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the binary cache's URL")
	cmd.Flags().StringArrayVar(&keys, "trusted-key", nil, "accept narinfos signed by this public key (NAME:base64 or a file; repeatable)")
	cmd.Flags().BoolVar(&noCheckSigs, "no-check-sigs", false, "accept narinfos without a valid signature by a trusted key")
	cmd.Flags().IntVar(&jobs, "jobs", 4, "downloads at once")
	cmd.Flags().DurationVar(&stall, "stall-timeout", 30*time.Second, "retry a download that sends nothing for this long")
	return cmd
}

// trustedKey parses a --trusted-key: the key itself, or a file holding it.
func trustedKey(k string) (signature.PublicKey, error) {
	pk, err := cache.ParsePublicKey(k)
	if err == nil {
		return pk, nil
	}
	if !strings.Contains(k, ":") {
		b, ferr := os.ReadFile(k)
		if ferr == nil {
			return cache.ParsePublicKey(string(b))
		}
		if !errors.Is(ferr, os.ErrNotExist) {
			return pk, ferr
		}
	}
	return pk, fmt.Errorf("--trusted-key: %w", err)
}
