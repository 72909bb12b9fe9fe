package nsrun

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrSetup: the namespaces or the store dir could not be made; the error
// says why and what fixes it.
var ErrSetup = errors.New("run")

// forwarded are the signals a stage passes on to its child.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGCONT}

// Run runs c.Argv in the namespaces and returns its exit status: the
// command's own, or 128+N when signal N ended it. An error means the command
// did not start (the store dir could not be made, user namespaces are not
// available, ...); the stages have then said why on stderr, or the error
// does.
func Run(c *Config) (int, error) {
	var err error
	if c.Self, err = self(); err != nil {
		return 0, err
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer ready.Close()
	cmd := exec.Command(c.Self, stageArg, "ns")
	cmd.Env = append(commandEnv(), c.env())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	cmd.ExtraFiles = []*os.File{readyW} // fd 3: closed by the command's start
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() != 0 {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		readyW.Close()
		return 0, fmt.Errorf("%w: %s", ErrSetup, NamespaceError(err))
	}
	readyW.Close()
	started := make(chan bool, 1)
	go func() {
		b, _ := io.ReadAll(ready)
		started <- string(b) == "ok"
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			// A terminal's ^C reaches the whole foreground process group,
			// the command included: pass SIGINT on only when it came from
			// elsewhere (this process is not in the foreground).
			if sig == syscall.SIGINT && inForeground() {
				continue
			}
			cmd.Process.Signal(sig)
		case err := <-done:
			ok := <-started
			code := cmd.ProcessState.ExitCode()
			if ws, isWS := cmd.ProcessState.Sys().(syscall.WaitStatus); isWS && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			if !ok {
				if code == exitSetup || err == nil {
					return 0, fmt.Errorf("%w: the namespace could not be set up (see above)", ErrSetup)
				}
				return 0, fmt.Errorf("%w: the namespace process ended before the command started: %v", ErrSetup, err)
			}
			return code, nil
		}
	}
}

func inForeground() bool {
	fg, err := unix.IoctlGetInt(int(os.Stdin.Fd()), unix.TIOCGPGRP)
	return err == nil && fg == unix.Getpgrp()
}

// NamespaceError explains a failure to create the namespaces: which
// setting forbids them and how to change it.
func NamespaceError(err error) string {
	msg := fmt.Sprintf("cannot create a user and mount namespace: %v", err)
	var why []string
	read := func(p string) (string, bool) {
		b, err := os.ReadFile(p)
		return strings.TrimSpace(string(b)), err == nil
	}
	if v, ok := read("/proc/sys/kernel/unprivileged_userns_clone"); ok && v == "0" {
		why = append(why, "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0); as root: sysctl -w kernel.unprivileged_userns_clone=1")
	}
	if v, ok := read("/proc/sys/user/max_user_namespaces"); ok && v == "0" {
		why = append(why, "user namespaces are limited to none (user.max_user_namespaces = 0); as root: sysctl -w user.max_user_namespaces=15000")
	} else if errors.Is(err, syscall.ENOSPC) {
		why = append(why, "the limit on user namespaces (user.max_user_namespaces, here or in an enclosing namespace) is reached; as root: sysctl -w user.max_user_namespaces=15000")
	}
	if v, ok := read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" {
		why = append(why, "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1, Ubuntu 24.04+); as root: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give storefs an AppArmor profile with 'userns,'")
	}
	if len(why) == 0 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES)) {
		why = append(why, "user namespaces are not permitted here (a container's seccomp profile, or a security module); run storefs run where unprivileged user namespaces work, or as root")
	}
	if len(why) > 0 {
		msg += ": " + strings.Join(why, "; ")
	}
	return msg
}
