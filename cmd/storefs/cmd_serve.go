package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/cache"
)

func newServeCommand(g *globals) *cobra.Command {
	var listen, signKey, compression, cacheDir string
	var priority int
	cmd := &cobra.Command{
		Use:   "serve [--listen ADDR] [--sign-key FILE] [--compression none|xz|zstd] [--priority N]",
		Short: "Serve the store as a Nix binary cache over HTTP",
		Long: `Serve the store over HTTP as a Nix binary cache until SIGINT or SIGTERM:
/nix-cache-info, /<hash>.narinfo and /nar/..., so that Nix (substituters =
http://ADDR, with the key in trusted-public-keys) and 'storefs substitute'
can fetch from it. It goes through the daemon when one runs and prints the
URL it serves on, one line on stdout, once it listens (--listen
127.0.0.1:0 picks a free port).

--sign-key signs every narinfo with a secret key ('storefs cache key
generate'). Without it the narinfos are unsigned, which Nix accepts only for
content-addressed items or with require-sigs = false.

--compression none (the default) streams each NAR straight from the store;
its FileHash is the NAR hash. xz or zstd compress each NAR once, on its first
request, streaming, into --cache-dir (default <state>/serve-cache), and serve
that file afterwards; the directory may be removed at any time.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
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
			if cacheDir == "" {
				cacheDir = filepath.Join(g.stateDir(), "serve-cache", compression)
			}
			h, err := cache.NewHandler(s, cache.HandlerOptions{
				StoreDir: s.StoreDir(), Priority: priority, Compression: compression,
				SignKey: sk, CacheDir: cacheDir, Logger: g.log,
			})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
			fmt.Fprintf(g.stdout, "http://%s\n", ln.Addr())
			if f, ok := g.stdout.(interface{ Sync() error }); ok {
				f.Sync()
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			select {
			case err := <-done:
				return err
			case <-cmd.Context().Done():
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
			}
			if err := <-done; !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:5000", "address to listen on (host:port)")
	cmd.Flags().StringVar(&signKey, "sign-key", "", "sign narinfos with the secret key in FILE")
	cmd.Flags().StringVar(&compression, "compression", "none", "NAR compression: none, xz or zstd")
	cmd.Flags().IntVar(&priority, "priority", 0, "Priority in nix-cache-info (lower is preferred; Nix's default 50)")
	cmd.Flags().StringVar(&cacheDir, "cache-dir", "", "where compressed NARs are kept (default <state>/serve-cache/COMPRESSION)")
	return cmd
}
