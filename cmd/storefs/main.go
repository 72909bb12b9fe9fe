// Command storefs is a content-addressed store compatible with Nix and Guix
// store paths. Run `storefs help` for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/storefs/storefs/nsrun"
	"github.com/storefs/storefs/store"
)

// Exit codes (documented in the root command's help and the README).
const (
	exitOK       = 0 // success
	exitFailure  = 1 // the operation failed (bad input, I/O error, path not valid, ...)
	exitUsage    = 2 // bad command line
	exitProblems = 3 // verify found problems
	exitLocked   = 4 // the registry stayed locked by another process
)

const exitHelp = `Exit status:
  0  success
  1  the operation failed (bad input, a path that is not valid, an I/O error)
  2  bad command line
  3  verify found problems
  4  the registry stayed locked by another process (a daemon or mount?)`

// globals are the flags every command shares.
type globals struct {
	state       string
	lockTimeout time.Duration
	verbose     bool
	noProgress  bool
	noDaemon    bool
	stdout      io.Writer
	stderr      io.Writer
	log         *slog.Logger
}

func (g *globals) stateDir() string {
	if g.state != "" {
		return g.state
	}
	return store.DefaultStateDir()
}

func (g *globals) options() store.Options {
	return store.Options{Logger: g.log, LockTimeout: g.lockTimeout}
}

// interactive reports whether progress should be drawn (stderr is a TTY).
func (g *globals) interactive() bool {
	if g.noProgress {
		return false
	}
	f, ok := g.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// usageError marks command-line mistakes (exit 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// problemsError marks a verify that found problems (exit 3).
type problemsError struct{ n int }

func (e problemsError) Error() string { return fmt.Sprintf("%d problem(s) found", e.n) }

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "storefs",
		Short: "A content-addressed store with Nix/Guix store paths",
		Long: `storefs keeps items at Nix/Guix-compatible store paths (<storedir>/<hash>-<name>),
imports and exports them as NAR, and records them in a bbolt registry.

The state dir is --state, else $STOREFS_STATE, else /var/lib/storefs for root
and $XDG_DATA_HOME/storefs (~/.local/share/storefs) for other users.

` + exitHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			level := slog.LevelWarn
			if g.verbose {
				level = slog.LevelDebug
			}
			g.log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
			return nil
		},
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.state, "state", "", "state dir of the store (default $STOREFS_STATE, else a per-user default)")
	pf.DurationVar(&g.lockTimeout, "lock-timeout", 0, "how long to wait for another process's registry lock (default 30s)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log what happens on stderr")
	pf.BoolVar(&g.noProgress, "no-progress", false, "never draw progress bars")
	pf.BoolVar(&g.noDaemon, "no-daemon", false, "open the store here even if a daemon could serve it (refused while one runs)")
	root.AddCommand(
		newInitCommand(g),
		newAddCommand(g),
		newPathCommand(g),
		newImportCommand(g),
		newExportCommand(g),
		newLsCommand(g),
		newInfoCommand(g),
		newClosureCommand(g),
		newCatCommand(g),
		newVerifyCommand(g),
		newOptimiseCommand(g),
		newCompareCommand(g),
		newDemoCommand(g),
		newDaemonCommand(g),
		newMountCommand(g),
		newRootsCommand(g),
		newGCCommand(g),
		newDeleteCommand(g),
		newRunCommand(g),
		newShellCommand(g),
		newCacheCommand(g),
		newServeCommand(g),
		newSubstituteCommand(g),
		newCopyCommand(g),
	)
	return root
}

// run executes the CLI and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr, log: slog.New(slog.DiscardHandler)}
	root := newRootCommand(g)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ue usageError
	var pe problemsError
	var es exitStatus
	switch {
	case errors.As(err, &es): // storefs run: the command's own status
		return es.code
	case errors.As(err, &pe):
		fmt.Fprintf(stderr, "storefs: %v\n", err)
		return exitProblems
	case errors.As(err, &ue) || isCobraUsage(err):
		fmt.Fprintf(stderr, "storefs: %v\n", err)
		fmt.Fprintf(stderr, "Run 'storefs help' for usage.\n")
		return exitUsage
	case errors.Is(err, store.ErrLocked):
		fmt.Fprintf(stderr, "storefs: %v\n", err)
		return exitLocked
	}
	fmt.Fprintf(stderr, "storefs: %v\n", err)
	return exitFailure
}

func isCobraUsage(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) { // EINVAL's text is "invalid argument" too
		return false
	}
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires exactly", "invalid argument \""} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func main() {
	if nsrun.IsStage() { // a stage of storefs run, inside its namespaces
		os.Exit(nsrun.Stage())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if p := os.Getenv("STOREFS_CPUPROFILE"); p != "" { // for performance work
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
		}
	}
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	pprof.StopCPUProfile()
	stop()
	os.Exit(code)
}
