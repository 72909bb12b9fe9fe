package store

import (
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"golang.org/x/sys/unix"
)

// GC roots live in <state>/gcroots: a symlink NAME -> STOREPATH is a direct
// root; gcroots/auto/<nix32(sha1(LINK))> -> LINK makes LINK (a symlink
// anywhere that points into the store) an indirect root, as Nix's
// addIndirectRoot does. An indirect root whose LINK is gone is stale and is
// removed when roots are read.

// Root is one GC root: the link that roots a path, and the path.
type Root struct {
	Link string `json:"link"`
	Path string `json:"path"`
}

func (s *Store) rootsDir() string { return filepath.Join(s.state, "gcroots") }
func (s *Store) autoDir() string  { return filepath.Join(s.rootsDir(), "auto") }

// lockGC takes <state>/gc.lock shared (an adder's critical section) or
// exclusive (a collector's); the returned function releases it.
func (s *Store) lockGC(exclusive bool) (func(), error) {
	f, err := os.OpenFile(s.GCLockPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("gc lock: %w", err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	if err := flock(f, how); err != nil {
		f.Close()
		return nil, fmt.Errorf("gc lock: %w", err)
	}
	return func() { f.Close() }, nil
}

func checkRootName(name string) error {
	if name == "" || name == "." || name == ".." || name == "auto" || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid root name %q: want a plain file name (not auto)", name)
	}
	return nil
}

// AddRoot makes p (a valid store path) a permanent root. With indirect,
// name is a symlink path anywhere (made to point at p) registered under
// gcroots/auto; otherwise it is a name under gcroots. A running collection
// cannot miss it: it is made under the GC lock, after checking p is valid.
func (s *Store) AddRoot(ctx context.Context, name, p string, indirect bool) (Root, error) {
	base, rel, err := SplitStorePath(s.storeDir, p)
	if err != nil {
		return Root{}, err
	}
	if rel != "" {
		return Root{}, fmt.Errorf("%s: not a store path (has a path below the item)", p)
	}
	unlock, err := s.lockGC(false)
	if err != nil {
		return Root{}, err
	}
	defer unlock()
	if ok, err := s.reg.IsValid(base); err != nil {
		return Root{}, err
	} else if !ok {
		return Root{}, fmt.Errorf("%s: %w", s.FullPath(base), ErrNotValid)
	}
	target := s.FullPath(base)
	if !indirect {
		if err := checkRootName(name); err != nil {
			return Root{}, err
		}
		link := filepath.Join(s.rootsDir(), name)
		if err := replaceSymlink(target, link); err != nil {
			return Root{}, err
		}
		s.bumpRootsGen()
		return Root{Link: link, Path: target}, nil
	}
	link, err := filepath.Abs(name)
	if err != nil {
		return Root{}, err
	}
	if within(link, s.state) {
		return Root{}, fmt.Errorf("an indirect root link must be outside the state dir: %s", link)
	}
	if st, err := os.Lstat(link); err == nil && st.Mode()&fs.ModeSymlink == 0 {
		return Root{}, fmt.Errorf("%s exists and is not a symlink: refusing to replace it", link)
	}
	if err := replaceSymlink(target, link); err != nil {
		return Root{}, err
	}
	if err := replaceSymlink(link, s.autoLink(link)); err != nil {
		return Root{}, err
	}
	s.bumpRootsGen()
	return Root{Link: link, Path: target}, nil
}

func (s *Store) autoLink(link string) string {
	h := sha1.Sum([]byte(link))
	return filepath.Join(s.autoDir(), nixbase32.EncodeToString(h[:]))
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// replaceSymlink atomically makes link point at target.
func replaceSymlink(target, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.tmp-%d", link, os.Getpid())
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// RemoveRoot removes a root: a name under gcroots, or an indirect root's
// link (its gcroots/auto entry goes; the link itself is left alone).
func (s *Store) RemoveRoot(name string) error {
	if checkRootName(name) == nil {
		p := filepath.Join(s.rootsDir(), name)
		if _, err := os.Lstat(p); err == nil {
			return os.Remove(p)
		}
	}
	link, err := filepath.Abs(name)
	if err != nil {
		return err
	}
	if err := os.Remove(s.autoLink(link)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no root named %q", name)
		}
		return err
	}
	return nil
}

// Roots reads the GC roots (removing stale indirect ones), sorted by link.
func (s *Store) Roots() ([]Root, error) {
	var out []Root
	err := filepath.WalkDir(s.rootsDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil
			}
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return nil
			}
			if base, ok := s.storeBase(t); ok {
				out = append(out, Root{Link: p, Path: s.FullPath(base)})
				return nil
			}
			// indirect: follow one level
			t2, err := os.Readlink(t)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) && filepath.Dir(p) == s.autoDir() {
					s.log.Info("removing stale link", "link", p, "target", t)
					os.Remove(p)
				}
				return nil
			}
			if base, ok := s.storeBase(t2); ok {
				out = append(out, Root{Link: t, Path: s.FullPath(base)})
			}
		case d.Type().IsRegular():
			if base, ok := s.storeBase(s.FullPath(d.Name())); ok {
				out = append(out, Root{Link: p, Path: s.FullPath(base)})
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Link < out[j].Link })
	return out, err
}

// storeBase returns the base name of a path in the logical store dir (or
// below an item).
func (s *Store) storeBase(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, s.storeDir+"/")
	if !ok {
		return "", false
	}
	base, _, _ := strings.Cut(rest, "/")
	if _, _, err := ParseBaseName(base); err != nil {
		return "", false
	}
	return base, true
}

// rootsGenPath counts root changes made through storefs (a stamp that does
// not rely on directory timestamps being fine-grained).
func (s *Store) rootsGenPath() string { return filepath.Join(s.state, "gcroots.gen") }

func (s *Store) bumpRootsGen() {
	os.WriteFile(s.rootsGenPath(), []byte(strconv.FormatInt(time.Now().UnixNano(), 10)+"-"+strconv.Itoa(os.Getpid())), 0o644)
}

// rootsStamp changes whenever a root is added or removed.
func (s *Store) rootsStamp() string {
	var b strings.Builder
	if gen, err := os.ReadFile(s.rootsGenPath()); err == nil {
		b.Write(gen)
		b.WriteByte(';')
	}
	for _, d := range []string{s.rootsDir(), s.autoDir()} {
		if st, err := os.Stat(d); err == nil {
			fmt.Fprintf(&b, "%d.%d;", st.ModTime().UnixNano(), st.Size())
		}
	}
	return b.String()
}
