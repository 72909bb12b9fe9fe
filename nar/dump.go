package nar

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// DumpPath writes the archive of the file system object at path to w, like
// `nix-store --dump`: it does not follow symlinks (a symlink at path is
// archived as a symlink), lists directories in bytewise name order, marks a
// regular file executable iff its owner may execute it (S_IXUSR), and
// refuses devices, sockets and FIFOs ("unsupported file type").
func DumpPath(w io.Writer, path string) error {
	nw := NewWriter(w)
	if err := dump(nw, path); err != nil {
		return err
	}
	return nw.Close()
}

func dump(nw *Writer, p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		f, err := openFile(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi2, err := f.Stat(); err != nil {
			return err
		} else if !fi2.Mode().IsRegular() {
			return fmt.Errorf("nar: %s: file changed type during dump", p)
		}
		if err := nw.Regular(mode&0o100 != 0, fi.Size(), f); err != nil {
			return fmt.Errorf("nar: dumping %s: %w", p, err)
		}
		return nil
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if err := nw.Symlink(target); err != nil {
			return fmt.Errorf("nar: dumping %s: %w", p, err)
		}
		return nil
	case mode.IsDir():
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		slices.Sort(names) // Go string order is bytewise
		if err := nw.StartDirectory(); err != nil {
			return fmt.Errorf("nar: dumping %s: %w", p, err)
		}
		for _, name := range names {
			if err := nw.Entry(name); err != nil {
				return fmt.Errorf("nar: dumping %s: %w", filepath.Join(p, name), err)
			}
			if err := dump(nw, filepath.Join(p, name)); err != nil {
				return err
			}
		}
		if err := nw.EndDirectory(); err != nil {
			return fmt.Errorf("nar: dumping %s: %w", p, err)
		}
		return nil
	default:
		return fmt.Errorf("nar: %s: unsupported file type (%s)", p, mode.Type())
	}
}
