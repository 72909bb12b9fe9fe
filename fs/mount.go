package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/chunk"
)

// MountOptions configure Mount.
type MountOptions struct {
	AllowOther bool // let other users see the mount (needs user_allow_other for non-root)
	Debug      bool // log every FUSE operation
}

// Mount mounts root at mountpoint, read-only, nosuid, nodev. The caller
// checks the mountpoint first (CheckMountpoint).
func Mount(mountpoint string, root *Root, mo MountOptions) (*fuse.Server, error) {
	opts := FuseOptions(root, mo)
	srv, err := fuse.NewServer(RawFS(root, opts), mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	if err := setReadahead(mountpoint, opts.MaxReadAhead); err != nil {
		root.log.Debug("storefs mount: readahead left at the kernel's default", "err", err)
	}
	return srv, nil
}

// setReadahead raises the mount's readahead window to bytes (root only):
// Linux takes a FUSE mount's window from its backing device info, at most
// 128 KiB whatever INIT asks for, and reads a file sequentially in READs of
// that size. With no-open files a READ is a round trip to storefs (~80 us
// here), so a cold 1 GiB read was 8192 of them: 0.64-1.18 s; with 1 MiB
// READs (max_pages allows them) it takes 0.34-0.38 s.
func setReadahead(mountpoint string, bytes int) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(bytes>>10)), 0)
}

// RawFS is the file system Mount serves: go-fuse's node bridge for root,
// with directories, and files unless root.o.OpenFiles, opened by the
// kernel without a request (noOpendir).
func RawFS(root *Root, opts *gofs.Options) fuse.RawFileSystem {
	return newNoOpendir(gofs.NewNodeFS(root, opts), !root.o.OpenFiles)
}

// FuseOptions are the go-fuse options Mount uses (for callers that build
// the server themselves, such as tests that count requests).
func FuseOptions(root *Root, mo MountOptions) *gofs.Options {
	long := root.o.Timeout // misses inside items are cached this long too; the root opts out per lookup
	return &gofs.Options{
		MountOptions: fuse.MountOptions{
			FsName:               "storefs:" + root.storeDir,
			Name:                 "storefs",
			Options:              []string{"ro", "nosuid", "nodev", "default_permissions"},
			DirectMount:          os.Geteuid() == 0,
			DirectMountFlags:     syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
			AllowOther:           mo.AllowOther,
			MaxBackground:        1024,
			MaxWrite:             1 << 20,
			MaxReadAhead:         1 << 20,
			EnableSymlinkCaching: true,
			IgnoreSecurityLabels: true,
			MaxStackDepth:        2,
			Debug:                mo.Debug,
			// READDIRPLUS on every page of a listing (no
			// CAP_READDIRPLUS_AUTO, which asks for plain READDIR after
			// the first page and then looks each entry up: a round trip
			// per entry on a cold walk). Items never change, so a listing
			// is fetched once and its entries and attributes cached.
		},
		EntryTimeout:    &long,
		AttrTimeout:     &long,
		NegativeTimeout: &long,
		UID:             root.o.UID,
		GID:             root.o.GID,
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
	}
}

// ReadPath says how file reads are served on this mount.
func ReadPath(srv *fuse.Server, root *Root) string {
	s := readPath(srv, root)
	if root.o.Chunks != nil {
		s += "; files of " + strconv.Itoa(chunk.Threshold>>10) + " KiB and more read from their chunks"
	}
	return s
}

func readPath(srv *fuse.Server, root *Root) string {
	if !root.o.OpenFiles && srv.KernelSettings().Flags64()&fuse.CAP_NO_OPEN_SUPPORT != 0 {
		return "files opened without a request to storefs; the kernel caches their pages, and reads the rest from the blob files through storefs"
	}
	if root.o.Passthrough && srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0 {
		return "passthrough to the blob files (kernel reads them directly)"
	}
	why := "not root"
	if os.Geteuid() == 0 {
		why = "the kernel does not offer passthrough"
		if !root.o.Passthrough {
			why = "passthrough turned off"
		}
	}
	return "reads spliced from the open blob files (" + why + ")"
}

// CheckMountpoint refuses a mountpoint inside the state dir (or holding
// it) and a non-empty one (unless allowNonempty), creates a missing one, and
// clears a stale mount left by a crashed storefs (whose directory answers
// ENOTCONN). It returns the clean absolute path.
func CheckMountpoint(mountpoint, state string, allowNonempty bool) (string, string, error) {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", "", err
	}
	st, err := filepath.Abs(state)
	if err != nil {
		return "", "", err
	}
	if real, err := filepath.EvalSymlinks(st); err == nil {
		st = real
	}
	// Refuse before creating anything (the parent's symlinks resolved).
	probe := mp
	if real, err := filepath.EvalSymlinks(filepath.Dir(mp)); err == nil {
		probe = filepath.Join(real, filepath.Base(mp))
	}
	if within(probe, st) || within(st, probe) {
		return "", "", fmt.Errorf("refusing to mount at %s: it is inside the state dir %s or contains it", mp, st)
	}
	note := ""
	// A dead FUSE server leaves its mount answering ENOTCONN, but a plain
	// stat may be served from the kernel's attribute cache: force a sync.
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, mp, unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &sx); errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) {
		if err := Unmount(mp, true); err != nil {
			return "", "", fmt.Errorf("%s: a stale mount (its server died) could not be cleared: %w", mp, err)
		}
		note = "cleared a stale mount at " + mp
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", "", err
	}
	if real, err := filepath.EvalSymlinks(mp); err == nil {
		mp = real
	}
	if within(mp, st) || within(st, mp) {
		return "", "", fmt.Errorf("refusing to mount at %s: it is inside the state dir %s or contains it", mp, st)
	}
	if !allowNonempty {
		f, err := os.Open(mp)
		if err != nil {
			return "", "", err
		}
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			return "", "", fmt.Errorf("refusing to mount at %s: it is not empty (--allow-nonempty to hide its contents)", mp)
		}
	}
	if mounted, _ := IsMounted(mp); mounted {
		return "", "", fmt.Errorf("refusing to mount at %s: something is mounted there already", mp)
	}
	return mp, note, nil
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// IsMounted reports whether a filesystem is mounted at mp (per
// /proc/self/mountinfo).
func IsMounted(mp string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescape(fields[4]) == mp {
			return true, nil
		}
	}
	return false, sc.Err()
}

func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// Unmount unmounts mp: a plain unmount, or a lazy one (detach now, finish
// when the last user lets go). Root uses umount2(2); other users fusermount3.
func Unmount(mp string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		return unix.Unmount(mp, flags)
	}
	args := []string{"-u", "-q"}
	if lazy {
		args = append(args, "-z")
	}
	bin := "fusermount3"
	if _, err := exec.LookPath(bin); err != nil {
		bin = "fusermount"
	}
	out, err := exec.Command(bin, append(args, mp)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Stop unmounts a served mount: it tries a plain unmount for about a
// second while the mount is busy, then detaches it lazily. It waits for the
// server to finish, but not for the last user of a lazily detached mount:
// the caller exits, which closes /dev/fuse and ends the connection.
func Stop(srv *fuse.Server, mp string) error {
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	var err error
	for deadline := time.Now().Add(time.Second); ; {
		if err = srv.Unmount(); err == nil {
			<-done
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := Unmount(mp, true); lerr != nil {
		return fmt.Errorf("unmount %s: %v; lazy unmount: %w", mp, err, lerr)
	}
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	return nil
}

// DeviceProblem says why this process cannot use /dev/fuse ("" when it
// can), naming the cause and the fix rather than leaving a user with
// fusermount's exit status.
func DeviceProblem() string {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return ""
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "/dev/fuse does not exist: load the fuse module (modprobe fuse) or, in a container, pass the device in (--device /dev/fuse)"
	case errors.Is(err, os.ErrPermission):
		var st unix.Stat_t
		if unix.Stat("/dev/fuse", &st) == nil {
			return fmt.Sprintf("/dev/fuse is mode %04o, owned by uid %d: this user (uid %d) cannot open it; as root: chmod 0666 /dev/fuse (Debian's default)", st.Mode&0o7777, st.Uid, os.Geteuid())
		}
	}
	return "/dev/fuse: " + err.Error()
}
