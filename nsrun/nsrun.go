// Package nsrun runs a command in private namespaces in which a store
// appears at its store dir (/gnu/store, /nix/store), without root and
// without a setuid helper: Linux unprivileged user namespaces.
//
// Three storefs processes take part, each the parent of the next:
//
//   - the caller (Run), in the host's namespaces, forwards signals and
//     turns the command's end into its own exit status;
//   - the namespace process (a re-exec, stage "ns"), root in a new user
//     namespace that maps it to the caller and in a new mount namespace,
//     makes the store dir: over an existing directory, or in a new root
//     (a tmpfs holding bind mounts of every entry of /, as nix-user-chroot
//     builds it) when the store dir does not exist. A blob- or chunk-mode
//     store is mounted there through FUSE and served by this process (which
//     also serves daemon.sock, as `storefs mount` does); a disk-mode store's
//     <state>/store is bind-mounted read-only. It temp-roots the items the
//     command uses (the lookups of the FUSE mount; in disk mode a scan of
//     the command's processes);
//   - the init process (stage "init"), pid 1 of a new pid namespace with a
//     mount namespace of its own, mounts /proc for it, enters the new root
//     and starts the command, in a nested user namespace that maps the
//     caller's uid and gid back to themselves (or as root with Root).
//
// Every stage is killed with its parent (PR_SET_PDEATHSIG), and everything
// in the pid namespace dies with its init, so a SIGKILL of the caller
// leaves no process and, the namespaces gone, no mount.
package nsrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Bind is a path of the host to bind into the namespace (--bind).
type Bind struct {
	Src string `json:"src"`
	Dst string `json:"dst"` // Src when empty
}

// Config is what a run needs; the caller fills it in and the stages read it.
type Config struct {
	State    string   `json:"state"`    // state dir
	StoreDir string   `json:"storeDir"` // logical store dir
	Mode     string   `json:"mode"`     // blob, chunk or disk
	Scratch  string   `json:"scratch"`  // an empty private dir on the host, for a new root
	Binds    []Bind   `json:"binds"`
	Root     bool     `json:"root"` // the command runs as root in the namespace
	Argv     []string `json:"argv"`
	Dir      string   `json:"dir"` // working directory
	UID      int      `json:"uid"` // the caller's ids outside
	GID      int      `json:"gid"`
	Verbose  bool     `json:"verbose"`
	NewRoot  string   `json:"newRoot"` // set by the namespace stage: the new root, or ""
	Self     string   `json:"self"`    // this program, re-executed for the stages (Run sets it)

	// Stdout and Stderr, if set, receive the command's output (default:
	// this process's own descriptors, passed down).
	Stdout, Stderr io.Writer `json:"-"`
}

// self is how to start this program again: argv[0] as the caller found it
// (so that a multi-call binary, a test binary named storefs say, is
// entered by the same name), else the executable's path.
func self() (string, error) {
	if p, err := exec.LookPath(os.Args[0]); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs, nil
		}
	}
	return os.Executable()
}

const (
	stageArg  = "__storefs-nsrun"
	configEnv = "STOREFS_NSRUN_CONFIG"
)

// ParseBind parses SRC[:DST].
func ParseBind(s string) (Bind, error) {
	src, dst, _ := strings.Cut(s, ":")
	if src == "" || !strings.HasPrefix(src, "/") || dst != "" && !strings.HasPrefix(dst, "/") {
		return Bind{}, fmt.Errorf("--bind %q: want SRC[:DST], absolute paths", s)
	}
	return Bind{Src: src, Dst: dst}, nil
}

// IsStage reports whether this process is one of a run's stages (the
// program must then call Stage before anything else).
func IsStage() bool { return len(os.Args) > 2 && os.Args[1] == stageArg }

func readConfig() (*Config, error) {
	v := os.Getenv(configEnv)
	if v == "" {
		return nil, errors.New("nsrun: no configuration in the environment")
	}
	c := &Config{}
	if err := json.Unmarshal([]byte(v), c); err != nil {
		return nil, fmt.Errorf("nsrun: bad configuration: %w", err)
	}
	return c, nil
}

func (c *Config) env() string {
	b, _ := json.Marshal(c)
	return configEnv + "=" + string(b)
}

// commandEnv is the environment the command gets: the caller's, without
// the configuration.
func commandEnv() []string {
	var out []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, configEnv+"=") {
			out = append(out, e)
		}
	}
	return out
}

// Stage runs this process's stage and returns its exit status.
func Stage() int {
	c, err := readConfig()
	if err == nil {
		switch os.Args[2] {
		case "ns":
			return nsStage(c)
		case "init":
			return initStage(c)
		}
		err = fmt.Errorf("nsrun: unknown stage %q", os.Args[2])
	}
	fmt.Fprintf(os.Stderr, "storefs run: %v\n", err)
	return 1
}

// stageError is a failure inside a stage, reported by that stage on stderr
// with this prefix; the stage then exits with exitSetup.
const exitSetup = 125

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "storefs run: "+format+"\n", args...)
	return exitSetup
}
