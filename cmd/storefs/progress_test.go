package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: its master and its slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pts: %v", err)
	}
	// raw output: the test reads exactly what storefs wrote
	if tio, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS); err == nil {
		tio.Oflag &^= unix.OPOST
		unix.IoctlSetTermios(int(s.Fd()), unix.TCSETS, tio)
	}
	return m, s
}

// On a terminal, add shows a progress bar on stderr and prints each path
// on stdout as it is added: every path starts a line of its own, never
// after a half-drawn bar.
func TestAddProgressLeavesPathLinesClean(t *testing.T) {
	dir := t.TempDir()
	var srcs []string
	for i := range 4 {
		src := filepath.Join(dir, fmt.Sprintf("item%d", i))
		for j := range 2000 {
			p := filepath.Join(src, fmt.Sprintf("d%02d", j%30), fmt.Sprintf("f%04d", j))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, fmt.Appendf(nil, "%d %d\n", i, j), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		srcs = append(srcs, src)
	}
	state := filepath.Join(dir, "state")
	var out bytes.Buffer
	if rc := run(context.Background(), []string{"--state", state, "init"}, &out, &out); rc != 0 {
		t.Fatalf("init: %d %s", rc, out.String())
	}
	m, s := openPTY(t)
	defer m.Close()
	var tty bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&tty, m); close(copied) }()
	rc := run(context.Background(), append([]string{"--state", state, "add", "--jobs", "1"}, srcs...), s, s)
	s.Close()
	<-copied // EIO once the slave is closed and drained
	if rc != 0 {
		t.Fatalf("add: %d\n%q", rc, tty.String())
	}
	text := tty.String()
	paths := 0
	for _, line := range strings.Split(text, "\n") {
		i := strings.Index(line, "/gnu/store/")
		if i < 0 {
			continue
		}
		paths++
		before := line[:i]
		if k := strings.LastIndex(before, "\r"); k >= 0 {
			before = before[k+1:]
		}
		if strings.TrimSpace(before) != "" {
			t.Errorf("a path printed after %q on its line", before)
		}
	}
	if paths != len(srcs) {
		t.Errorf("%d paths on the terminal, want %d:\n%q", paths, len(srcs), text)
	}
	if !strings.Contains(text, "adding 4 paths") {
		t.Errorf("no progress bar drawn:\n%q", text)
	}
}
