package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/store"
)

func newMountCommand(g *globals) *cobra.Command {
	var o struct {
		allowNonempty, allowOther, debug, openFiles, noPassthrough, noPrefetch bool
	}
	cmd := &cobra.Command{
		Use:   "mount MOUNTPOINT",
		Short: "Present a blob-mode store read-only through FUSE (foreground)",
		Long: `Mount the store at MOUNTPOINT (for example /gnu/store as root, or any
directory of your own) and serve it until SIGINT or SIGTERM, which unmount it.
Items appear as <hash>-<name> directories (or files), read-only: directories
0555, files 0444 or 0555, mtime 1, owned by you. While mounted, the process
also serves <state>/daemon.sock, so 'storefs add' from another shell works
and the new item appears in the mount at once.

A mountpoint inside the state dir, or a non-empty one (unless
--allow-nonempty), is refused; a stale mount left by a crash is cleared.
The kernel opens files without asking storefs and keeps their pages cached
(items never change), so an open costs what a native one does. With
--open-files every open is a request to storefs, and as root on Linux 6.9+
the kernel then reads files straight from their blobs (passthrough): the
native throughput on large files, one round trip more per open. Chunk mode
always opens files.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c, err := daemon.Dial(g.stateDir()); err == nil {
				pid := c.StoreInfo().PID
				c.Close()
				return fmt.Errorf("mount: a storefs daemon or mount (pid %d) already owns this store; stop it first (a mount serves daemon.sock itself)", pid)
			}
			s, err := store.Open(g.stateDir(), g.options())
			if err != nil {
				return err
			}
			defer s.Close()
			if !s.Mode().Mounted() {
				return fmt.Errorf("mount: %s holds a disk-mode store: its items are real directories already, under %s", s.StateDir(), s.RealStoreDir())
			}
			if why := fs.DeviceProblem(); why != "" {
				return fmt.Errorf("mount: %s", why)
			}
			mp, note, err := fs.CheckMountpoint(args[0], s.StateDir(), o.allowNonempty)
			if err != nil {
				return err
			}
			if note != "" {
				fmt.Fprintf(g.stderr, "storefs mount: %s\n", note)
			}
			if err := s.Registry().Hold(); err != nil {
				return err
			}
			defer s.Registry().Release()
			root := fs.NewRoot(s.Registry(), s.Blobs(), s.StoreDir(), fs.Options{
				Logger:      g.log,
				UID:         uint32(os.Getuid()),
				GID:         uint32(os.Getgid()),
				OpenFiles:   o.openFiles,
				Passthrough: o.openFiles && !o.noPassthrough && os.Geteuid() == 0,
				Chunks:      s.Chunks(),
				NoPrefetch:  o.noPrefetch,
			})
			s.OnChange(root.Changed)
			s.KeepInUse(root.InUse)
			srv, err := fs.Mount(mp, root, fs.MountOptions{AllowOther: o.allowOther, Debug: o.debug})
			if err != nil {
				return err
			}

			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var wg sync.WaitGroup
			var serveErr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				// "mounted at" once daemon.sock is in place too: whoever waits
				// for it (a script, a test) may talk to the store at once.
				serveErr = daemon.Serve(ctx, s, daemon.Options{Logger: g.log, Ready: func(string) {
					fmt.Fprintf(g.stderr, "storefs mount: %s mounted at %s; file reads: %s\n", s.StoreDir(), mp, fs.ReadPath(srv, root))
				}})
				if serveErr != nil {
					cancel()
				}
			}()
			unmounted := make(chan struct{})
			go func() { srv.Wait(); close(unmounted) }()
			select {
			case <-ctx.Done():
				err = fs.Stop(srv, mp)
				if err == nil {
					fmt.Fprintf(g.stderr, "storefs mount: unmounted %s\n", mp)
				}
			case <-unmounted:
				// Someone ran umount or fusermount -u: the mount is gone
				// already, and unmounting mp again could take down another
				// mount made there since (a new storefs mount).
				cancel()
				fmt.Fprintf(g.stderr, "storefs mount: %s was unmounted from outside\n", mp)
			}
			wg.Wait()
			return errors.Join(err, serveErr)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.allowNonempty, "allow-nonempty", false, "mount over a non-empty directory")
	f.BoolVar(&o.allowOther, "allow-other", false, "let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)")
	f.BoolVar(&o.debug, "debug", false, "log every FUSE request")
	f.BoolVar(&o.openFiles, "open-files", false, "send every open to storefs, for passthrough reads (root, Linux 6.9+): native throughput on large files, a round trip per open")
	f.BoolVar(&o.noPrefetch, "no-prefetch", false, "read no blobs ahead when the files of a directory are read in listing order")
	f.BoolVar(&o.noPassthrough, "no-passthrough", false, "with --open-files: serve reads from the blob files even where passthrough is possible")
	return cmd
}
