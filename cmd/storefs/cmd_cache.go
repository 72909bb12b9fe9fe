package main

import (
	"fmt"
	"io"
	"os"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/spf13/cobra"

	"github.com/storefs/storefs/cache"
)

// signKeyFlag reads the secret key file a --sign-key flag names (nil when
// the flag is empty: nothing is signed).
func signKeyFlag(file string) (*signature.SecretKey, error) {
	if file == "" {
		return nil, nil
	}
	k, err := cache.ReadSecretKey(file)
	if err != nil {
		return nil, err
	}
	return &k, nil
}

func newCacheCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Binary cache keys (see also serve, substitute and copy)",
		Long: `Keys that sign and check binary cache narinfos, in Nix's text form:
interchangeable with 'nix-store --generate-binary-cache-key' and the
secret-key / trusted-public-keys settings of Nix.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error { return usagef("cache: want a subcommand (key)") },
	}
	key := &cobra.Command{
		Use:   "key",
		Short: "Generate a signing key, or print a secret key's public key",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, args []string) error { return usagef("cache key: want generate or public") },
	}
	key.AddCommand(&cobra.Command{
		Use:   "generate NAME",
		Short: "Print a new ed25519 secret key NAME:base64 (keep it secret)",
		Long: `Print a new ed25519 secret key, "NAME:base64(64 bytes)", the format of the
secret key file 'nix-store --generate-binary-cache-key' writes. NAME is by
convention the cache's host name and a number, e.g. cache.example.org-1.
Its public key is 'storefs cache key public < SECRET'.

  storefs cache key generate cache.example.org-1 > secret
  storefs cache key public < secret > public`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			secret, _, err := cache.GenerateKey(args[0])
			if err != nil {
				return usageError{err}
			}
			_, err = fmt.Fprintln(g.stdout, secret)
			return err
		},
	})
	key.AddCommand(&cobra.Command{
		Use:   "public",
		Short: "Read a secret key on stdin, print its public key NAME:base64",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<16))
			if err != nil {
				return err
			}
			sk, err := cache.LoadSecretKey(string(b))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(g.stdout, sk.ToPublicKey().String())
			return err
		},
	})
	cmd.AddCommand(key)
	return cmd
}
