package cas

import (
	"os"

	"golang.org/x/sys/unix"
)

// Sys is the seam through which Links touches the filesystem: every call
// that matters to the `.links` races goes through it, so tests can count
// calls and inject errors (EEXIST, ENOENT, ENOSPC, EMLINK, EIO, ...).
// Errors are returned as from the system calls (a *os.PathError or
// *os.LinkError wrapping a unix.Errno), so callers test them with errors.Is.
type Sys interface {
	Link(oldname, newname string) error
	Rename(oldname, newname string) error
	Lstat(name string) (os.FileInfo, error)
	Chmod(name string, mode os.FileMode) error
	// Utimes sets atime and mtime (nanoseconds since the epoch), not
	// following a final symlink.
	Utimes(name string, atime, mtime int64) error
	Unlink(name string) error
	Mkdir(name string, perm os.FileMode) error
}

// OS is the real filesystem.
type OS struct{}

func (OS) Link(o, n string) error              { return os.Link(o, n) }
func (OS) Rename(o, n string) error            { return rename(o, n) }
func (OS) Lstat(n string) (os.FileInfo, error) { return os.Lstat(n) }
func (OS) Chmod(n string, m os.FileMode) error { return os.Chmod(n, m) }
func (OS) Mkdir(n string, m os.FileMode) error { return os.Mkdir(n, m) }

// Unlink removes a file; a directory (EISDIR) is removed if it is empty.
// Unlike os.Remove it costs one system call when the name does not exist.
func (OS) Unlink(n string) error {
	err := unix.Unlink(n)
	if err == unix.EISDIR {
		err = unix.Rmdir(n)
	}
	if err != nil {
		return &os.PathError{Op: "unlink", Path: n, Err: err}
	}
	return nil
}
func (OS) Utimes(n string, atime, mtime int64) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime), unix.NsecToTimespec(mtime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, n, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: n, Err: err}
	}
	return nil
}
