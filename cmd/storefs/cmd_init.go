package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/store"
)

func newInitCommand(g *globals) *cobra.Command {
	var mode, storeDir string
	var linksMin int64
	cmd := &cobra.Command{
		Use:   "init [--mode blob|disk] [--store-dir DIR]",
		Short: "Create a store in the state dir",
		Long: `Create a store in the state dir. The mode and the store dir are fixed for the
store's life: the store dir is part of every store path's hash.

  blob  file contents in a hash-addressed blob area (each distinct file once),
        trees in the registry; presented by FUSE (storefs mount)
  disk  items are real directories under <state>/store, deduplicated through
        <state>/store/.links hard links as they are added (guix-daemon's default)`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkMode(mode); err != nil {
				return err
			}
			if err := refuseServed(g.stateDir()); err != nil {
				return err
			}
			s, err := store.Init(g.stateDir(), store.InitOptions{Mode: store.Mode(mode), StoreDir: storeDir, LinksMinSize: &linksMin}, g.options())
			if err != nil {
				return err
			}
			defer s.Close()
			fmt.Fprintf(g.stdout, "initialised a %s store for %s in %s\n", s.Mode(), s.StoreDir(), s.StateDir())
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", string(store.ModeBlob), "blob, chunk (blob with large files split into content-defined chunks) or disk")
	cmd.Flags().StringVar(&storeDir, "store-dir", store.DefaultStoreDir, "logical store dir (e.g. /gnu/store or /nix/store)")
	cmd.Flags().Int64Var(&linksMin, "links-min-size", cas.DefaultLinksMinSize, "disk mode: files smaller than this are never hard-linked through .links (0 = all, as Nix)")
	return cmd
}

func checkMode(mode string) error {
	if m := store.Mode(mode); m != store.ModeBlob && m != store.ModeDisk && m != store.ModeChunk {
		return usagef("unknown mode %q (want blob, chunk or disk)", mode)
	}
	return nil
}

// refuseServed gives init the error it gives on an existing store when a
// daemon serves the store (and holds its registry, so it cannot be read).
func refuseServed(state string) error {
	c, err := daemon.Dial(state)
	if err != nil {
		return nil
	}
	defer c.Close()
	in := c.StoreInfo()
	return fmt.Errorf("%s: %w (a %s store for %s)", in.StateDir, store.ErrExists, in.Mode, in.StoreDir)
}
