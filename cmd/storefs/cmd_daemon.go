package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/store"
)

func newDaemonCommand(g *globals) *cobra.Command {
	var group string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "daemon [--group GROUP]",
		Short: "Own the store and serve every other storefs command on <state>/daemon.sock",
		Long: `Serve the store until SIGINT or SIGTERM. While it runs, every storefs command
on this state dir goes through <state>/daemon.sock (HTTP/JSON over a unix
socket, NARs streamed; see docs/API.md) with the same output and exit status
as without it. The socket is private to the store's owner (and root); with
--group, members of GROUP may use it too.

On SIGTERM the daemon stops accepting, lets in-flight requests finish (at most
--shutdown-timeout; the rest fail cleanly, registering nothing), removes the
socket and exits 0. A socket left by a killed daemon is detected and removed.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := store.Open(g.stateDir(), g.options())
			if err != nil {
				return err
			}
			defer s.Close()
			return daemon.Serve(cmd.Context(), s, daemon.Options{
				Logger:          g.log,
				Group:           group,
				ShutdownTimeout: timeout,
				Ready: func(sock string) {
					fmt.Fprintf(g.stderr, "storefs daemon: serving %s on %s\n", s.StateDir(), sock)
				},
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "also let members of GROUP use the daemon")
	cmd.Flags().DurationVar(&timeout, "shutdown-timeout", 30*time.Second, "how long in-flight requests may finish after SIGTERM")
	return cmd
}
