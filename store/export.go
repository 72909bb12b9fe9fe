package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nix-community/go-nix/pkg/wire"

	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/registry"
)

// tree is an item's directory records, loaded in one read transaction so
// that the slow part (reading blobs) happens outside any transaction.
type tree struct {
	info *registry.PathInfo
	dirs map[registry.Digest]*registry.Directory
}

func (s *Store) info(p string) (*registry.PathInfo, string, error) {
	base, rel, err := SplitStorePath(s.storeDir, p)
	if err != nil {
		return nil, "", err
	}
	pi, err := s.reg.Get(base)
	if err != nil {
		if errors.Is(err, registry.ErrNotValid) {
			return nil, "", fmt.Errorf("%s: %w", s.FullPath(base), ErrNotValid)
		}
		return nil, "", err
	}
	return pi, rel, nil
}

func (s *Store) loadTree(pi *registry.PathInfo) (*tree, error) {
	t := &tree{info: pi, dirs: map[registry.Digest]*registry.Directory{}}
	if !s.mode.trees() || pi.Root.Type != registry.TypeDirectory {
		return t, nil
	}
	err := s.reg.View(func(rd registry.Reader) error {
		var load func(d registry.Digest) error
		load = func(d registry.Digest) error {
			if t.dirs[d] != nil {
				return nil
			}
			dir, err := rd.Directory(d)
			if err != nil {
				return fmt.Errorf("%s: %w", pi.Path, err)
			}
			t.dirs[d] = dir
			for _, e := range dir.Entries {
				if e.Type == registry.TypeDirectory {
					if err := load(e.Key); err != nil {
						return err
					}
				}
			}
			return nil
		}
		return load(pi.Root.Key)
	})
	return t, err
}

// Export writes the NAR of a valid path to w.
func (s *Store) Export(ctx context.Context, w io.Writer, p string) error {
	pi, rel, err := s.info(p)
	if err != nil {
		return err
	}
	if rel != "" {
		return fmt.Errorf("export %s: not a store path (has a path below the item)", p)
	}
	return s.exportNAR(ctx, w, pi)
}

func (s *Store) exportNAR(ctx context.Context, w io.Writer, pi *registry.PathInfo) error {
	if s.mode == ModeDisk {
		return nar.DumpPath(w, filepath.Join(s.RealStoreDir(), pi.Path))
	}
	t, err := s.loadTree(pi)
	if err != nil {
		return err
	}
	nw := nar.NewWriter(w)
	if err := s.emitNode(ctx, nw, t, pi.Root); err != nil {
		return fmt.Errorf("export %s: %w", s.FullPath(pi.Path), err)
	}
	return nw.Close()
}

func (s *Store) emitNode(ctx context.Context, nw *nar.Writer, t *tree, n registry.Node) error {
	switch n.Type {
	case registry.TypeSymlink:
		return nw.Symlink(n.Target)
	case registry.TypeRegular:
		if err := ctx.Err(); err != nil {
			return err
		}
		if n.Size == 0 {
			return nw.RegularBytes(n.Executable, nil)
		}
		f, err := s.openContent(n)
		if err != nil {
			return err
		}
		defer f.Close()
		return nw.Regular(n.Executable, n.Size, f)
	case registry.TypeDirectory:
		dir := t.dirs[n.Key]
		if dir == nil {
			return registry.ErrMissingDirectory
		}
		if err := nw.StartDirectory(); err != nil {
			return err
		}
		for _, e := range dir.Entries {
			if err := nw.Entry(e.Name); err != nil {
				return err
			}
			if err := s.emitNode(ctx, nw, t, e.Node); err != nil {
				return err
			}
		}
		return nw.EndDirectory()
	}
	return fmt.Errorf("bad node type %v", n.Type)
}

// ExportBundle writes paths in `nix-store --export` format, ordered so that
// each path comes after those of its references that are in the bundle.
func (s *Store) ExportBundle(ctx context.Context, w io.Writer, paths []string) error {
	var bases []string
	for _, p := range paths {
		pi, rel, err := s.info(p)
		if err != nil {
			return err
		}
		if rel != "" {
			return fmt.Errorf("export %s: not a store path", p)
		}
		bases = append(bases, pi.Path)
	}
	order, err := s.topoSort(bases)
	if err != nil {
		return err
	}
	for _, base := range order {
		pi, err := s.reg.Get(base)
		if err != nil {
			return err
		}
		if err := wire.WriteUint64(w, 1); err != nil {
			return err
		}
		if err := s.exportNAR(ctx, w, pi); err != nil {
			return err
		}
		if err := wire.WriteUint64(w, exportMagic); err != nil {
			return err
		}
		if err := wire.WriteString(w, s.FullPath(pi.Path)); err != nil {
			return err
		}
		if err := wire.WriteUint64(w, uint64(len(pi.References))); err != nil {
			return err
		}
		for _, r := range pi.References {
			if err := wire.WriteString(w, s.FullPath(r)); err != nil {
				return err
			}
		}
		deriver := ""
		if pi.Deriver != "" {
			deriver = s.FullPath(pi.Deriver)
		}
		if err := wire.WriteString(w, deriver); err != nil {
			return err
		}
		if err := wire.WriteUint64(w, 0); err != nil {
			return err
		}
	}
	return wire.WriteUint64(w, 0)
}

// topoSort orders bases so references (within the set) come first.
func (s *Store) topoSort(bases []string) ([]string, error) {
	in := map[string]bool{}
	for _, b := range bases {
		in[b] = true
	}
	closure, err := s.reg.Closure(bases) // dependencies first
	if err != nil {
		return nil, err
	}
	var out []string
	for _, b := range closure {
		if in[b] {
			out = append(out, b)
			delete(in, b)
		}
	}
	return out, nil
}

// Cat writes the bytes of a regular file of an item: STOREPATH for an item
// that is a file, STOREPATH/REL for a file inside one. Symlinks are not
// followed.
func (s *Store) Cat(ctx context.Context, w io.Writer, p string) error {
	pi, rel, err := s.info(p)
	if err != nil {
		return err
	}
	if s.mode == ModeDisk {
		return s.catDisk(w, pi, rel, p)
	}
	t, err := s.loadTree(pi)
	if err != nil {
		return err
	}
	n := pi.Root
	if rel != "" {
		for _, comp := range strings.Split(rel, "/") {
			if n.Type != registry.TypeDirectory {
				return fmt.Errorf("%s: %w", p, ErrNotDirectory)
			}
			dir := t.dirs[n.Key]
			found := false
			for _, e := range dir.Entries {
				if e.Name == comp {
					n, found = e.Node, true
					break
				}
			}
			if !found {
				return fmt.Errorf("%s: %w", p, fs.ErrNotExist)
			}
		}
	}
	switch n.Type {
	case registry.TypeDirectory:
		return fmt.Errorf("%s: %w", p, ErrIsDirectory)
	case registry.TypeSymlink:
		return fmt.Errorf("%s: is a symlink to %q", p, n.Target)
	}
	if n.Size == 0 {
		return nil
	}
	f, err := s.openContent(n)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	_, err = io.CopyN(w, f, n.Size)
	return err
}

func (s *Store) catDisk(w io.Writer, pi *registry.PathInfo, rel, p string) error {
	cur := filepath.Join(s.RealStoreDir(), pi.Path)
	comps := []string{}
	if rel != "" {
		comps = strings.Split(rel, "/")
	}
	for i := 0; ; i++ {
		st, err := os.Lstat(cur)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrInvalid) {
				return fmt.Errorf("%s: %w", p, fs.ErrNotExist)
			}
			return err
		}
		if i == len(comps) {
			switch {
			case st.IsDir():
				return fmt.Errorf("%s: %w", p, ErrIsDirectory)
			case st.Mode()&fs.ModeSymlink != 0:
				t, _ := os.Readlink(cur)
				return fmt.Errorf("%s: is a symlink to %q", p, t)
			}
			f, err := os.Open(cur)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(w, f)
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("%s: %w", p, ErrNotDirectory)
		}
		cur = filepath.Join(cur, comps[i])
	}
}
