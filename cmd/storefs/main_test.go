package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
)

// An I/O error whose text is "invalid argument" (EINVAL) is a failure, not
// a bad command line: exit status 1 and no "storefs help" hint.
func TestErrnoIsNotUsage(t *testing.T) {
	for _, tc := range []struct {
		err   error
		usage bool
	}{
		{fmt.Errorf("unmount /mnt: %w", syscall.EINVAL), false},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.EINVAL}, false},
		{errors.New(`invalid argument "soon" for "--lock-timeout" flag: time: invalid duration "soon"`), true},
		{errors.New(`unknown flag: --frobnicate`), true},
	} {
		if got := isCobraUsage(tc.err); got != tc.usage {
			t.Errorf("isCobraUsage(%q) = %v, want %v", tc.err, got, tc.usage)
		}
	}
}
