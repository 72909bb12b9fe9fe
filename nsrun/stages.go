package nsrun

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/daemon"
	"github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/store"
)

// readyFD is the descriptor, in every stage, of the pipe whose writer the
// init stage fills with "ok" once the command started.
const readyFD = 3

func (c *Config) logger() *slog.Logger {
	if !c.Verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// nsStage is the namespace process: root of a new user namespace (unless
// the caller was root) with a mount namespace of its own.
func nsStage(c *Config) int {
	log := c.logger()
	unix.CloseOnExec(readyFD)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("making the mounts private: %v", err)
	}
	newRoot, target, err := makeStoreDir(c, log)
	if err != nil {
		return fail("%v", err)
	}
	c.NewRoot = newRoot

	s, err := store.Open(c.State, store.Options{Logger: log})
	if err != nil {
		return fail("%v", err)
	}
	defer s.Close()
	temp := s.NewTempRoots()
	defer temp.Close()
	roots := newRootSet(temp, log)
	if base, ok := itemOf(c.StoreDir, c.Argv[0]); ok {
		roots.add(base) // the command itself, before it starts
	}

	var stopContent func()
	if s.Mode().Mounted() {
		stop, err := serveMount(c, s, target, roots, log)
		if err != nil {
			return fail("%v", err)
		}
		stopContent = stop
	} else {
		if err := bindStore(s.RealStoreDir(), target); err != nil {
			return fail("%v", err)
		}
		stopContent = func() {}
	}

	cmd := exec.Command(c.Self, stageArg, "init")
	cmd.Env = append(commandEnv(), c.env())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{os.NewFile(readyFD, "ready")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	if err := cmd.Start(); err != nil {
		stopContent()
		return fail("starting the namespace's init: %v", err)
	}
	cmd.ExtraFiles[0].Close()
	if !s.Mode().Mounted() {
		// disk mode: no lookups to see, so scan what the command's
		// processes use, as gc --runtime-roots does
		stopScan := scanUsed(s, cmd.Process.Pid, c, roots)
		defer stopScan()
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-sigs:
				forward(sig, cmd.Process)
			case <-done:
				return
			}
		}
	}()
	cmd.Wait()
	close(done)
	stopContent()
	return exitCode(cmd.ProcessState)
}

// forward passes a signal on to a child, except a terminal's SIGINT, which
// the whole foreground process group got already.
func forward(sig os.Signal, p *os.Process) {
	if sig == syscall.SIGINT && inForeground() {
		return
	}
	p.Signal(sig)
}

func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// itemOf is the base name of the item p is in, if p is below storeDir.
func itemOf(storeDir, p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok {
		return "", false
	}
	base, _, _ := strings.Cut(rest, "/")
	_, _, err := store.ParseBaseName(base)
	return base, err == nil
}

// makeStoreDir returns where the store is to be mounted: the store dir
// itself when it exists, or the store dir in a new root otherwise.
func makeStoreDir(c *Config, log *slog.Logger) (newRoot, target string, err error) {
	if st, err := os.Stat(c.StoreDir); err == nil && st.IsDir() {
		return "", c.StoreDir, nil
	}
	if err := unix.Mount("storefs-root", c.Scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return "", "", fmt.Errorf("the store dir %s does not exist and a new root cannot be made for it: mount tmpfs on %s: %v", c.StoreDir, c.Scratch, err)
	}
	comps := strings.Split(strings.Trim(c.StoreDir, "/"), "/")
	if err := mirror("/", c.Scratch, comps, log); err != nil {
		return "", "", fmt.Errorf("the store dir %s does not exist and cannot be created in the namespace: %v", c.StoreDir, err)
	}
	return c.Scratch, filepath.Join(c.Scratch, c.StoreDir), nil
}

// mirror fills dst, a directory of the new root, with src's entries:
// directories and files bind-mounted (with what is mounted below them),
// symlinks copied. The entry on the way to the store dir (path[0]) is
// mirrored in turn instead of bound, so that the rest of the way can be
// created; where it is missing it is created.
func mirror(src, dst string, path []string, log *slog.Logger) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	onPath := false
	for _, e := range ents {
		name := e.Name()
		s, d := filepath.Join(src, name), filepath.Join(dst, name)
		if len(path) > 0 && name == path[0] {
			onPath = true
			if !e.IsDir() {
				return fmt.Errorf("%s exists and is not a directory", s)
			}
			if err := os.Mkdir(d, 0o755); err != nil {
				return err
			}
			if err := mirror(s, d, path[1:], log); err != nil {
				return err
			}
			continue
		}
		if err := bindEntry(s, d, e.Type()); err != nil {
			log.Debug("storefs run: leaving out of the new root", "path", s, "err", err)
		}
	}
	if len(path) > 0 && !onPath {
		return os.MkdirAll(filepath.Join(append([]string{dst}, path...)...), 0o755)
	}
	return nil
}

// bindEntry makes dst show src: a copy of a symlink, else a bind mount on
// an empty directory or file made for it.
func bindEntry(src, dst string, typ iofs.FileMode) error {
	switch {
	case typ&iofs.ModeSymlink != 0:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(t, dst)
	case typ.IsDir():
		if err := os.Mkdir(dst, 0o755); err != nil {
			return err
		}
	default:
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}

// bindStore bind-mounts a disk-mode store's real store dir at target,
// read-only.
func bindStore(real, target string) error {
	if err := unix.Mount(real, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s at %s: %v", real, target, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
	// a remount must keep the flags the kernel locked on the mount below
	var st unix.Statfs_t
	if unix.Statfs(real, &st) == nil {
		flags |= uintptr(st.Flags) & (unix.MS_NOEXEC | unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME)
	}
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("making %s read-only: %v", target, err)
	}
	return nil
}

// serveMount mounts a blob- or chunk-mode store at target through FUSE and
// serves it (and daemon.sock) until the returned stop is called.
func serveMount(c *Config, s *store.Store, target string, roots *rootSet, log *slog.Logger) (func(), error) {
	if c, err := daemon.Dial(s.StateDir()); err == nil {
		pid := c.StoreInfo().PID
		c.Close()
		return nil, fmt.Errorf("a storefs daemon or mount (pid %d) owns this store; stop it first (storefs run serves the store, daemon.sock included, while the command runs)", pid)
	}
	if err := s.Registry().Hold(); err != nil {
		return nil, err
	}
	root := fs.NewRoot(s.Registry(), s.Blobs(), s.StoreDir(), fs.Options{
		Logger:      log,
		UID:         uint32(os.Getuid()),
		GID:         uint32(os.Getgid()),
		Passthrough: c.UID == 0,
		Chunks:      s.Chunks(),
		Used:        roots.add,
	})
	s.OnChange(root.Changed)
	s.KeepInUse(root.InUse)
	srv, err := fs.Mount(target, root, fs.MountOptions{})
	if err != nil {
		s.Registry().Release()
		return nil, err
	}
	log.Debug("storefs run: mounted", "at", target, "reads", fs.ReadPath(srv, root))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := daemon.Serve(ctx, s, daemon.Options{Logger: log}); err != nil {
			log.Warn("storefs run: serving daemon.sock", "err", err)
		}
	})
	return func() {
		cancel()
		wg.Wait()
		s.OnChange(nil)
		fs.Stop(srv, target)
		s.Registry().Release()
	}, nil
}

// rootSet temp-roots each item once.
type rootSet struct {
	mu   sync.Mutex
	seen map[string]bool
	t    *store.TempRoots
	log  *slog.Logger
}

func newRootSet(t *store.TempRoots, log *slog.Logger) *rootSet {
	return &rootSet{seen: map[string]bool{}, t: t, log: log}
}

func (r *rootSet) add(base string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[base] {
		return
	}
	if err := r.t.Add(base); err != nil {
		r.log.Warn("storefs run: temp root", "path", base, "err", err)
		return
	}
	r.seen[base] = true
}

// scanUsed temp-roots, every scanEvery, the items the processes of the
// init's pid namespace use (disk mode).
func scanUsed(s *store.Store, initPid int, c *Config, roots *rootSet) func() {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid_for_children", initPid))
	if err != nil {
		ns, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", initPid))
	}
	if err != nil {
		return func() {}
	}
	extra := []string{}
	if c.NewRoot != "" {
		extra = append(extra, c.NewRoot+c.StoreDir)
	}
	want := func(pid int) bool {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
		return err == nil && got == ns
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(scanEvery)
		defer t.Stop()
		for {
			for base := range s.UsedBy(want, extra...) {
				roots.add(base)
			}
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	})
	return func() { close(stop); wg.Wait() }
}

const scanEvery = 100 * time.Millisecond

// initStage is pid 1 of the command's pid namespace, in a mount namespace
// of its own: it adds the binds and /proc, enters the new root, starts the
// command and reaps whatever ends in the namespace until the command ends.
func initStage(c *Config) int {
	unix.CloseOnExec(readyFD)
	for _, b := range c.Binds {
		if err := bind(c.NewRoot, b); err != nil {
			return fail("--bind %s: %v", b.Src, err)
		}
	}
	// A /proc of this pid namespace; where the kernel refuses one (a
	// container that masks parts of /proc), the outer one stays.
	if err := unix.Mount("proc", filepath.Join(c.NewRoot, "/proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && c.Verbose {
		fmt.Fprintf(os.Stderr, "storefs run: keeping the outer /proc: %v\n", err)
	}
	if c.NewRoot != "" {
		// pivot_root, not chroot: a chrooted process may not create the
		// user namespace the command runs in
		if err := enterRoot(c.NewRoot); err != nil {
			return fail("entering the new root: %v", err)
		}
	}
	if err := os.Chdir(c.Dir); err != nil {
		os.Chdir("/")
		fmt.Fprintf(os.Stderr, "storefs run: working directory %s: %v; starting in /\n", c.Dir, err)
	}
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Env = commandEnv()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if !c.Root && c.UID != 0 {
		// back to the caller's own ids, without capabilities
		attr.Cloneflags = syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: c.UID, HostID: 0, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: c.GID, HostID: 0, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	ready := os.NewFile(readyFD, "ready")
	err := cmd.Start()
	ready.Write([]byte("ok")) // the status below is the command's
	ready.Close()
	if err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		fmt.Fprintf(os.Stderr, "storefs run: %v\n", err)
		return code
	}
	go func() {
		for sig := range sigs {
			forward(sig, cmd.Process)
		}
	}()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail("waiting for the command: %v", err)
		}
		if pid == cmd.Process.Pid {
			if ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ws.ExitStatus()
		}
	}
}

// bind mounts b.Src at b.Dst (b.Src when empty) below root, creating the
// mountpoint where the new root allows it.
func bind(root string, b Bind) error {
	dst := b.Dst
	if dst == "" {
		dst = b.Src
	}
	st, err := os.Stat(b.Src)
	if err != nil {
		return err
	}
	target := filepath.Join(root, dst)
	if _, err := os.Stat(target); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("cannot create %s in the namespace: %v", dst, err)
		}
		if st.IsDir() {
			err = os.Mkdir(target, 0o755)
		} else {
			var f *os.File
			if f, err = os.Create(target); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("cannot create %s in the namespace: %v", dst, err)
		}
	}
	return unix.Mount(b.Src, target, "", unix.MS_BIND|unix.MS_REC, "")
}

// enterRoot makes root this mount namespace's root, the old one unmounted
// (pivot_root(".", ".") stacks the old root on the new one).
func enterRoot(root string) error {
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %v", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %v", err)
	}
	return os.Chdir("/")
}
