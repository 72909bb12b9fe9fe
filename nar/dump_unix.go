//go:build unix

package nar

import (
	"os"
	"syscall"
)

// openFile opens a file that lstat said is regular without following a
// symlink or blocking on a FIFO that replaced it in the meantime.
func openFile(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}
