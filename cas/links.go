package cas

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultLinksMinSize is Guix's %deduplication-minimum-size: smaller files
// are never linked.
const DefaultLinksMinSize = 8192

// TempLinkPrefix starts the names of temporary links made in `.links`.
const TempLinkPrefix = ".tmp-link-"

var pidString = strconv.Itoa(os.Getpid())

// maxAttempts bounds the retries of one Canonicalize (reference §1.8).
const maxAttempts = 3

// Links deduplicates files of a disk-mode store through hard links to
// `<store>/.links/<key>`, Guix's canonicalize-with-link made race-safe:
//
//   - an entry created by another process (EEXIST) is used, not replaced;
//   - ENOENT on the entry side is retried (at most maxAttempts times) only
//     while `.links` exists; a path that vanished is skipped;
//   - ENOSPC (full directory index) and EMLINK (link limit) skip the file;
//   - a file already linked to its entry is left alone (no temp link, no
//     rename: renaming between two links of one inode would leak the temp);
//   - an entry of another size, or one that is not a regular file (the
//     dangling-symlink loop of Guix bug#42023), is replaced, never linked to;
//   - every existence check is lstat; temp names that collide are redrawn;
//     the temp link is removed on every error path;
//   - the directory holding the file is made writable only for the rename
//     and gets its exact mode and times back, even on error, and the store
//     directory itself is never chmodded.
//
// A Links is safe for concurrent use, also by several processes.
type Links struct {
	store string // canonical real store directory
	dir   string // store/.links
	sys   Sys
	log   *slog.Logger
}

// NewLinks returns the `.links` deduplicator of the store directory
// storeDir (a real directory; it is made canonical here so the "never chmod
// the store" comparison is exact).
func NewLinks(storeDir string, sys Sys, log *slog.Logger) (*Links, error) {
	abs, err := filepath.Abs(storeDir)
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if sys == nil {
		sys = OS{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Links{store: filepath.Clean(abs), dir: filepath.Join(abs, ".links"), sys: sys, log: log}, nil
}

// Dir is the `.links` directory.
func (l *Links) Dir() string { return l.dir }

// Entry is the path of the entry for key.
func (l *Links) Entry(k Key) string { return filepath.Join(l.dir, k.String()) }

// Outcome says what Canonicalize did.
type Outcome int

const (
	// Skipped: nothing changed (vanished file, full directory, link limit,
	// retries exhausted). Reason says why.
	Skipped Outcome = iota
	// Canonical: the file became the entry (it was the first of its content).
	Canonical
	// Linked: the file was replaced by a link to the existing entry.
	Linked
	// Already: the file was already a link to the entry.
	Already
)

func (o Outcome) String() string {
	return [...]string{"skipped", "canonical", "linked", "already linked"}[o]
}

// Result of one Canonicalize.
type Result struct {
	Outcome Outcome
	Reason  string // for Skipped
	Size    int64  // the file's size (bytes freed when Linked)
	Ino     uint64 // the inode the file has now (unless Skipped)
}

func is(err error, errno syscall.Errno) bool { return errors.Is(err, errno) }

func skipped(reason string, size int64) (Result, error) {
	return Result{Outcome: Skipped, Reason: reason, Size: size}, nil
}

// Canonicalize makes path (a regular, read-only file of an item whose
// single-file NAR hash is key) share its inode with the `.links` entry of
// key. Only unexpected errors (EIO, EACCES, ...) are returned; the races and
// limits above end in a Result. On any outcome path's contents are intact.
func (l *Links) Canonicalize(path string, key Key) (Result, error) {
	g := l.guard(filepath.Dir(path))
	r, err := l.canonicalize(path, key, g)
	if rerr := g.restore(); err == nil && rerr != nil {
		return r, rerr
	}
	return r, err
}

// PathKey is a file to canonicalise and its key.
type PathKey struct {
	Path string
	Key  Key
}

// CanonicalizeDir canonicalises files that all live in the directory dir,
// making dir writable (if it is not) once for all their renames and
// restoring its exact mode and times after the last. Results and errors
// are per file; a failure to restore dir is returned separately.
func (l *Links) CanonicalizeDir(dir string, files []PathKey) ([]Result, []error, error) {
	g := l.guard(dir)
	rs := make([]Result, len(files))
	errs := make([]error, len(files))
	for i, f := range files {
		rs[i], errs[i] = l.canonicalize(f.Path, f.Key, g)
	}
	return rs, errs, g.restore()
}

func (l *Links) canonicalize(path string, key Key, g *dirGuard) (Result, error) {
	entry := l.Entry(key)
	var size int64
	for attempt := 0; attempt < maxAttempts; attempt++ {
		st, err := l.sys.Lstat(path)
		if err != nil {
			if is(err, unix.ENOENT) || is(err, unix.ENOTDIR) {
				return skipped("file vanished", size)
			}
			return Result{}, err
		}
		if !st.Mode().IsRegular() {
			return skipped("not a regular file", size)
		}
		size = st.Size()
		est, err := l.sys.Lstat(entry)
		if err != nil && !is(err, unix.ENOENT) {
			return Result{}, err
		}
		if err != nil { // no entry yet: ours becomes it
			err = l.sys.Link(path, entry)
			switch {
			case err == nil:
				return Result{Outcome: Canonical, Size: size, Ino: inodeOf(st)}, nil
			case is(err, unix.EEXIST): // another process won: use theirs
				continue
			case is(err, unix.ENOENT):
				if _, derr := l.sys.Lstat(l.dir); derr != nil && is(derr, unix.ENOENT) {
					if merr := l.sys.Mkdir(l.dir, 0o755); merr != nil && !is(merr, unix.EEXIST) {
						return Result{}, merr
					}
					continue
				}
				// .links exists (maybe made by another worker meanwhile): retry
				// while the file itself is still there
				if _, perr := l.sys.Lstat(path); perr == nil {
					continue
				}
				return skipped("file vanished", size)
			case is(err, unix.ENOSPC):
				return skipped("no space in .links (directory index full?)", size)
			case is(err, unix.EMLINK):
				return skipped("too many links", size)
			}
			return Result{}, err
		}
		if sameFile(st, est) {
			return Result{Outcome: Already, Size: size, Ino: inodeOf(st)}, nil
		}
		if !est.Mode().IsRegular() || est.Size() != st.Size() {
			l.log.Warn("removing corrupted link", "entry", entry, "size", est.Size(), "want", st.Size(), "mode", est.Mode())
			if err := l.sys.Unlink(entry); err != nil && !is(err, unix.ENOENT) {
				return Result{}, err
			}
			continue
		}
		tmp, res, err := l.tempLink(entry, size)
		if err != nil || res != nil {
			if res != nil && res.Reason == "entry vanished" {
				continue
			}
			if res != nil {
				return *res, nil
			}
			return Result{}, err
		}
		err = g.enter()
		if err == nil {
			err = l.sys.Rename(tmp, path)
		}
		if err != nil {
			l.sys.Unlink(tmp)
			if is(err, unix.EMLINK) {
				return skipped("too many links (rename)", size)
			}
			if is(err, unix.ENOENT) {
				return skipped("file vanished", size)
			}
			return Result{}, err
		}
		// rename between two links of one inode does nothing: path became a
		// link of the entry meanwhile (another process), and tmp is still
		// there. Look (a lookup shares the .links lock) before removing.
		if _, lerr := l.sys.Lstat(tmp); lerr == nil {
			if uerr := l.sys.Unlink(tmp); uerr == nil {
				return Result{Outcome: Already, Size: size, Ino: inodeOf(est)}, nil
			}
		}
		return Result{Outcome: Linked, Size: size, Ino: inodeOf(est)}, nil
	}
	return skipped("retries exhausted", size)
}

// tempLink links entry to a fresh temporary name in `.links`. A collision
// (a stale temp link of a crashed process, a reused pid) draws a new name.
func (l *Links) tempLink(entry string, size int64) (string, *Result, error) {
	for range 16 {
		tmp := filepath.Join(l.dir, TempLinkPrefix+pidString+"-"+strconv.FormatUint(rand.Uint64(), 36))
		err := l.sys.Link(entry, tmp)
		switch {
		case err == nil:
			return tmp, nil, nil
		case is(err, unix.EEXIST):
			continue
		case is(err, unix.ENOENT): // a collector pruned the entry meanwhile
			return "", &Result{Outcome: Skipped, Reason: "entry vanished", Size: size}, nil
		case is(err, unix.ENOSPC):
			return "", &Result{Outcome: Skipped, Reason: "no space in .links (directory index full?)", Size: size}, nil
		case is(err, unix.EMLINK):
			return "", &Result{Outcome: Skipped, Reason: "too many links", Size: size}, nil
		default:
			return "", nil, err
		}
	}
	return "", &Result{Outcome: Skipped, Reason: "no free temporary name", Size: size}, nil
}

// dirGuard makes a directory writable by its owner for renames, and gives
// it back its exact mode and times afterwards. The store directory itself is
// never touched.
type dirGuard struct {
	l       *Links
	dir     string
	st      os.FileInfo // as found, once entered
	chmoded bool
	fd      int // holds the flock while entered
}

func (l *Links) guard(dir string) *dirGuard { return &dirGuard{l: l, dir: filepath.Clean(dir)} }

// enter makes the directory writable (once).
func (g *dirGuard) enter() error {
	if g.st != nil || g.dir == g.l.store {
		return nil
	}
	// one guard at a time per directory, across processes: another guard's
	// writable mode and rename times must not be taken for the originals
	fd, err := unix.Open(g.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return err
	}
	st, err := g.l.sys.Lstat(g.dir)
	if err != nil {
		unix.Close(fd)
		return err
	}
	g.fd = fd
	g.st = st
	if mode := dirMode(st); mode&0o200 == 0 {
		if err := g.l.sys.Chmod(g.dir, mode|0o200); err != nil {
			return err
		}
		g.chmoded = true
	}
	return nil
}

// restore puts back the mode and times found by enter (a rename changed
// the times), if enter ran.
func (g *dirGuard) restore() error {
	if g.st == nil {
		return nil
	}
	var err error
	atime, mtime := fileTimes(g.st)
	if g.chmoded {
		err = g.l.sys.Chmod(g.dir, dirMode(g.st))
	}
	if uerr := g.l.sys.Utimes(g.dir, atime, mtime); err == nil {
		err = uerr
	}
	g.st = nil
	unix.Close(g.fd) // releases the lock
	if err != nil {
		return fmt.Errorf("restoring %s: %w", g.dir, err)
	}
	return nil
}

func dirMode(st os.FileInfo) fs.FileMode {
	return st.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

func inodeOf(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}

func sameFile(a, b os.FileInfo) bool {
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func fileTimes(st os.FileInfo) (atime, mtime int64) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Atim.Nano(), s.Mtim.Nano()
	}
	return st.ModTime().UnixNano(), st.ModTime().UnixNano()
}

// LinkExisting makes dst a new link to key's entry if the entry exists, is
// a regular file of the given size and has the canonical mode for exec
// (0555 or 0444). It reports whether it linked; false means the caller
// should write dst itself. This is how an add avoids writing bytes the
// store already has.
func (l *Links) LinkExisting(key Key, size int64, exec bool, dst string) (bool, error) {
	entry := l.Entry(key)
	est, err := l.sys.Lstat(entry)
	if err != nil {
		if is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	want := fs.FileMode(0o444)
	if exec {
		want = 0o555
	}
	if !est.Mode().IsRegular() || est.Size() != size || est.Mode().Perm() != want {
		return false, nil
	}
	err = l.sys.Link(entry, dst)
	switch {
	case err == nil:
		return true, nil
	case is(err, unix.ENOENT), is(err, unix.EMLINK), is(err, unix.ENOSPC):
		return false, nil // pruned meanwhile, or at the link limit: write it
	}
	return false, err
}

// Inodes returns the inode numbers of every `.links` entry (Nix's
// inodeHash): files with these inodes are already deduplicated.
func (l *Links) Inodes() (map[uint64]bool, error) {
	f, err := os.Open(l.dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return map[uint64]bool{}, nil
		}
		return nil, err
	}
	defer f.Close()
	inodes := map[uint64]bool{}
	buf := make([]byte, 1<<16)
	for {
		n, err := unix.ReadDirent(int(f.Fd()), buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return inodes, nil
		}
		for b := buf[:n]; len(b) > 0; {
			reclen := int(uint16(b[16]) | uint16(b[17])<<8)
			ino := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
				uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if !bytes.HasPrefix(name, []byte(TempLinkPrefix)) {
				inodes[ino] = true
			}
			b = b[reclen:]
		}
	}
}
