package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/nsrun"
	"github.com/storefs/storefs/store"
)

// exitStatus is a command's exit status passed through as storefs's own.
type exitStatus struct{ code int }

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

type runFlags struct {
	storeDir string
	binds    []string
	root     bool
}

func (o *runFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.storeDir, "store-dir", "", "where the store appears in the namespace (default: the store's own store dir)")
	f.StringArrayVar(&o.binds, "bind", nil, "also bind the host's SRC at DST (default SRC) in the namespace; repeatable")
	f.BoolVar(&o.root, "root", false, "run the command as root in the namespace (default: as yourself)")
}

const runLong = `Start CMD in a new user and mount namespace (no root or setuid helper
needed: Linux unprivileged user namespaces) in which the store appears at its
store dir (/gnu/store unless init --store-dir said otherwise), read-only, and
the rest of the file system is as outside. A blob- or chunk-mode store is
mounted there through FUSE (served by storefs, which also serves daemon.sock
meanwhile, so items added from outside appear at once); a disk-mode store's
<state>/store is bind-mounted. Where the store dir does not exist, the
namespace gets a new root holding the host's / entries and the store dir.

CMD runs as you (or as root inside with --root), with your environment,
stdin, stdout and stderr; its exit status is storefs's (128+N when signal N
ended it), and SIGINT, SIGTERM and SIGHUP to storefs reach it. The items CMD
uses are temp roots while it runs, so 'storefs gc' keeps them. When CMD ends,
or storefs is killed, nothing stays mounted or running.

Fails with exit status 1 and a message naming the setting to change where
user namespaces are disabled or restricted, or where /dev/fuse is missing or
not usable.`

func newRunCommand(g *globals) *cobra.Command {
	var o runFlags
	cmd := &cobra.Command{
		Use:   "run [--store-dir DIR] [--bind SRC[:DST]]... [--root] -- CMD [ARG...]",
		Short: "Run a command with the store at its store dir, rootless",
		Long:  runLong,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInNamespace(g, &o, args)
		},
	}
	o.register(cmd)
	return cmd
}

func newShellCommand(g *globals) *cobra.Command {
	var o runFlags
	cmd := &cobra.Command{
		Use:   "shell [--store-dir DIR] [--bind SRC[:DST]]... [--root]",
		Short: "Start $SHELL (or /bin/sh) with the store at its store dir, rootless",
		Long:  "storefs run -- $SHELL: see 'storefs run --help'.",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			sh := os.Getenv("SHELL")
			if sh == "" {
				sh = "/bin/sh"
			}
			return runInNamespace(g, &o, []string{sh})
		},
	}
	o.register(cmd)
	return cmd
}

func runInNamespace(g *globals, o *runFlags, argv []string) error {
	var binds []nsrun.Bind
	for _, b := range o.binds {
		bb, err := nsrun.ParseBind(b)
		if err != nil {
			return usageError{err}
		}
		binds = append(binds, bb)
	}
	if c, err := daemon.Dial(g.stateDir()); err == nil {
		pid := c.StoreInfo().PID
		c.Close()
		return fmt.Errorf("run: a storefs daemon or mount (pid %d) owns this store; stop it first (storefs run serves the store itself while the command runs, daemon.sock included)", pid)
	}
	s, err := store.Open(g.stateDir(), g.options())
	if err != nil {
		return err
	}
	defer s.Close()
	if s.Mode().Mounted() {
		if why := fs.DeviceProblem(); why != "" {
			return fmt.Errorf("run: the %s-mode store is presented through FUSE, and %s", s.Mode(), why)
		}
	}
	storeDir := s.StoreDir()
	if o.storeDir != "" {
		if err := store.CheckStoreDir(o.storeDir); err != nil {
			return usageError{err}
		}
		storeDir = o.storeDir
	}
	scratch, release, err := s.NewScratch()
	if err != nil {
		return err
	}
	defer release()
	cwd, err := os.Getwd()
	if err != nil {
		cwd = "/"
	}
	code, err := nsrun.Run(&nsrun.Config{
		State:    s.StateDir(),
		StoreDir: storeDir,
		Mode:     string(s.Mode()),
		Scratch:  scratch,
		Binds:    binds,
		Root:     o.root,
		Argv:     argv,
		Dir:      cwd,
		UID:      os.Getuid(),
		GID:      os.Getgid(),
		Verbose:  g.verbose,
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return exitStatus{code}
	}
	return nil
}
