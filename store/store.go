package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/registry"
)

// Mode is how a store keeps item contents.
type Mode string

const (
	// ModeBlob keeps each distinct file once in a hash-addressed blob area
	// and each item's tree in the registry; FUSE presents it.
	ModeBlob Mode = "blob"
	// ModeDisk keeps items as real directories under <state>/store.
	ModeDisk Mode = "disk"
	// ModeChunk is blob mode with large files split by content-defined
	// chunking (package chunk): each distinct chunk is stored once.
	ModeChunk Mode = "chunk"
)

// trees reports whether items of this mode live as trees in the registry
// (blob and chunk mode), presented by FUSE.
func (m Mode) trees() bool { return m == ModeBlob || m == ModeChunk }

// Mounted reports whether a store of this mode is presented through FUSE
// (its items are trees in the registry, not real directories).
func (m Mode) Mounted() bool { return m.trees() }

// DefaultStoreDir is the logical store dir of a new store.
const DefaultStoreDir = "/gnu/store"

// Errors callers test with errors.Is.
var (
	ErrNoStore      = errors.New("no store here")
	ErrExists       = errors.New("a store already exists here")
	ErrNotValid     = registry.ErrNotValid
	ErrLocked       = registry.ErrLocked
	ErrUnsupported  = errors.New("unsupported file type")
	ErrBadInput     = errors.New("bad input")
	ErrNotDirectory = errors.New("not a directory")
	ErrIsDirectory  = errors.New("is a directory")
)

// DefaultStateDir is $STOREFS_STATE, else /var/lib/storefs for root, else
// $XDG_DATA_HOME/storefs (~/.local/share/storefs).
func DefaultStateDir() string {
	if d := os.Getenv("STOREFS_STATE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/storefs"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "storefs")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "storefs-"+strconv.Itoa(os.Getuid()))
	}
	return filepath.Join(home, ".local", "share", "storefs")
}

// Options configure Init and Open.
type Options struct {
	Logger      *slog.Logger
	LockTimeout time.Duration // registry lock wait; registry.DefaultTimeout when 0
	Sys         cas.Sys       // the `.links` syscall seam (tests inject faults); the real one when nil
}

// InitOptions are the settings fixed when a store is created.
type InitOptions struct {
	Mode     Mode
	StoreDir string
	// LinksMinSize (disk mode): files smaller than this are never linked
	// through `.links`; nil means Guix's 8192, 0 links every file as Nix does.
	LinksMinSize *int64
}

const settingLinksMinSize = "linksMinSize"

// Store is an open store. It is safe for concurrent use.
type Store struct {
	state    string
	storeDir string
	mode     Mode
	reg      *registry.Registry
	blobs    *cas.Blobs
	chunks   *chunk.Areas // chunk mode: manifests and chunks
	log      *slog.Logger

	temp       *TempRoots // the process's default temp roots
	syncs      syncGroup
	writeback  atomic.Bool    // a background syncfs is running (startWriteback)
	writebacks sync.WaitGroup // Close waits for it

	onChange func(added, removed []string) // see OnChange
	inUse    func() []cas.Key              // see KeepInUse

	// disk mode: `.links` deduplication
	links    *cas.Links
	linksMin int64
}

func (s *Store) registryPath() string { return filepath.Join(s.state, "registry.db") }
func (s *Store) tmpDir() string       { return filepath.Join(s.state, "tmp") }
func (s *Store) blobDir() string      { return filepath.Join(s.state, "blobs") }

// RealStoreDir is where disk-mode items live (<state>/store).
func (s *Store) RealStoreDir() string { return filepath.Join(s.state, "store") }

// StateDir is the store's state dir.
func (s *Store) StateDir() string { return s.state }

// StoreDir is the logical store dir paths are named under.
func (s *Store) StoreDir() string { return s.storeDir }

// Mode is the store's mode.
func (s *Store) Mode() Mode { return s.mode }

// OnChange sets a function called after paths become valid or stop being
// valid through this Store (base names), e.g. to tell a mount. It must not
// block.
func (s *Store) OnChange(fn func(added, removed []string)) { s.onChange = fn }

func (s *Store) register(batch []registry.Registration) error {
	added, err := s.reg.Register(batch)
	if err == nil && len(added) > 0 && s.onChange != nil {
		s.onChange(added, nil)
	}
	return err
}

// KeepInUse sets a function giving the keys of files in use (held open by
// a mount): a collection keeps their blobs, manifests and chunks, so that a
// chunked file held open stays readable after its item is collected, as a
// blob does through its descriptor. It must not block.
func (s *Store) KeepInUse(fn func() []cas.Key) { s.inUse = fn }

// LinksMinSize is the `.links` threshold of a disk-mode store.
func (s *Store) LinksMinSize() int64 { return s.linksMin }

// Registry gives access to the registry (for the daemon and the mount).
func (s *Store) Registry() *registry.Registry { return s.reg }

// Blobs is the blob area (blob and chunk mode).
func (s *Store) Blobs() *cas.Blobs { return s.blobs }

// Chunks are the manifest and chunk areas (chunk mode; nil otherwise).
func (s *Store) Chunks() *chunk.Areas { return s.chunks }

// Init creates a store in state (which may exist but must not hold a store).
func Init(state string, io InitOptions, opts Options) (*Store, error) {
	if io.Mode == "" {
		io.Mode = ModeBlob
	}
	if !io.Mode.trees() && io.Mode != ModeDisk {
		return nil, fmt.Errorf("unknown mode %q (want blob, chunk or disk)", io.Mode)
	}
	if io.StoreDir == "" {
		io.StoreDir = DefaultStoreDir
	}
	if err := CheckStoreDir(io.StoreDir); err != nil {
		return nil, err
	}
	state, err := filepath.Abs(state)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	regPath := filepath.Join(state, "registry.db")
	if _, err := os.Stat(regPath); err == nil {
		if r, err := registry.Open(regPath, registry.Options{Timeout: opts.LockTimeout}); err == nil {
			return nil, fmt.Errorf("%s: %w (a %s store for %s)", state, ErrExists, r.Mode(), r.StoreDir())
		}
		return nil, fmt.Errorf("%s: %w", state, ErrExists)
	}
	dirs := []string{"tmp", "locks"}
	switch io.Mode {
	case ModeBlob:
		dirs = append(dirs, "blobs")
	case ModeChunk:
		dirs = append(dirs, "blobs", "manifests", "chunks")
	default:
		dirs = append(dirs, "store")
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(state, d), 0o755); err != nil {
			return nil, err
		}
	}
	reg, err := registry.Create(regPath, io.StoreDir, string(io.Mode), registry.Options{Timeout: opts.LockTimeout})
	if err != nil {
		if errors.Is(err, registry.ErrExists) {
			return nil, fmt.Errorf("%s: %w", state, ErrExists)
		}
		return nil, err
	}
	if io.Mode == ModeDisk {
		min := int64(cas.DefaultLinksMinSize)
		if io.LinksMinSize != nil {
			min = *io.LinksMinSize
		}
		if min < 0 {
			return nil, fmt.Errorf("--links-min-size must not be negative")
		}
		if err := reg.SetSetting(settingLinksMinSize, strconv.FormatInt(min, 10)); err != nil {
			return nil, err
		}
	}
	return Open(state, opts)
}

// Open opens the store in state. It removes staging leftovers of processes
// that died.
func Open(state string, opts Options) (*Store, error) {
	state, err := filepath.Abs(state)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(state)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("state dir %s does not exist: %w (run `storefs init`)", state, ErrNoStore)
		}
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("state dir %s: %w", state, ErrNotDirectory)
	}
	reg, err := registry.Open(filepath.Join(state, "registry.db"), registry.Options{Timeout: opts.LockTimeout})
	if err != nil {
		if errors.Is(err, registry.ErrNoRegistry) {
			return nil, fmt.Errorf("%s: %w (run `storefs init`)", state, ErrNoStore)
		}
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{state: state, storeDir: reg.StoreDir(), mode: Mode(reg.Mode()), reg: reg, log: log}
	s.syncs.cond = sync.NewCond(&s.syncs.mu)
	if !s.mode.trees() && s.mode != ModeDisk {
		return nil, fmt.Errorf("%s: registry records unknown mode %q", state, s.mode)
	}
	// Cleaning up after dead processes and making a staging dir happen under
	// one lock, so that no process can take another's half-made staging dir
	// (a lock file not yet locked) for a leftover.
	unlock, err := s.lockTmp()
	if err != nil {
		return nil, err
	}
	err = s.cleanTmp()
	unlock()
	if err != nil {
		return nil, err
	}
	s.blobs = cas.NewBlobs(s.blobDir())
	if s.mode == ModeChunk {
		s.chunks = chunk.NewAreas(filepath.Join(state, "manifests"), filepath.Join(state, "chunks"))
	}
	s.temp = &TempRoots{s: s, name: strconv.Itoa(os.Getpid())}
	if s.mode == ModeDisk {
		s.linksMin = cas.DefaultLinksMinSize
		if v, ok, err := reg.Setting(settingLinksMinSize); err != nil {
			return nil, err
		} else if ok {
			if s.linksMin, err = strconv.ParseInt(v, 10, 64); err != nil {
				return nil, fmt.Errorf("%s: bad %s setting %q", state, settingLinksMinSize, v)
			}
		}
		if s.links, err = cas.NewLinks(s.RealStoreDir(), opts.Sys, log); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Close releases the process's temp roots.
func (s *Store) Close() error {
	s.writebacks.Wait()
	return s.temp.Close()
}

// lockTmp takes <state>/tmp.lock exclusively.
func (s *Store) lockTmp() (func(), error) {
	if err := os.MkdirAll(s.tmpDir(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.state, "tmp.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("staging area: %w", err)
	}
	if err := flock(f, unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("staging area: %w", err)
	}
	return func() { f.Close() }, nil
}

// stage is one operation's staging dir, tmp/<pid>-<n>/, with the flock on
// tmp/<pid>-<n>.lock that tells other processes it is in use. It exists
// only while the operation runs, so tmp/ is empty when nothing is going on.
type stage struct {
	dir  string
	lock *os.File
}

var stageSeq atomic.Int64

func (s *Store) newStage() (*stage, error) {
	unlock, err := s.lockTmp()
	if err != nil {
		return nil, err
	}
	defer unlock()
	for range 100 {
		name := filepath.Join(s.tmpDir(), fmt.Sprintf("%d-%d", os.Getpid(), stageSeq.Add(1)))
		f, err := os.OpenFile(name+".lock", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue // a leftover of an earlier process with our pid
		}
		if err != nil {
			return nil, fmt.Errorf("staging area: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		if err := os.Mkdir(name, 0o700); err != nil {
			f.Close()
			os.Remove(name + ".lock")
			return nil, fmt.Errorf("staging area: %w", err)
		}
		return &stage{dir: name, lock: f}, nil
	}
	return nil, errors.New("staging area: could not create a unique directory")
}

// NewScratch makes a private, empty staging dir for an operation of the
// caller (storefs run builds a namespace's root on it). It exists until
// release, or until a store is opened after this process died.
func (s *Store) NewScratch() (dir string, release func(), err error) {
	st, err := s.newStage()
	if err != nil {
		return "", nil, err
	}
	return st.dir, st.remove, nil
}

// remove deletes the staging dir, then its lock file.
func (st *stage) remove() {
	removeAll(st.dir)
	os.Remove(st.lock.Name())
	st.lock.Close()
}

// cleanTmp removes staging dirs whose owner is gone (its lock file is not
// locked, or missing).
func (s *Store) cleanTmp() error {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return os.MkdirAll(s.tmpDir(), 0o755)
		}
		return err
	}
	names := map[string]bool{}
	for _, e := range ents {
		names[e.Name()] = true
	}
	for _, e := range ents {
		n := e.Name()
		if strings.HasSuffix(n, ".lock") {
			continue
		}
		p := filepath.Join(s.tmpDir(), n)
		if names[n+".lock"] {
			f, err := os.OpenFile(p+".lock", os.O_RDWR, 0)
			if err != nil {
				continue
			}
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
				f.Close() // owner alive
				continue
			}
			s.log.Info("removing staging leftovers of a dead process", "dir", p)
			removeAll(p)
			os.Remove(p + ".lock")
			f.Close()
			continue
		}
		// a leftover without a lock file (a crash between the two steps)
		removeAll(p)
	}
	for n := range names { // lock files whose directory is gone
		if d, ok := strings.CutSuffix(n, ".lock"); ok && !names[d] {
			p := filepath.Join(s.tmpDir(), n)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				continue
			}
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
				os.Remove(p)
			}
			f.Close()
		}
	}
	return nil
}

// removeAll is os.RemoveAll that first makes read-only directories (a
// canonicalised item has 0555 directories) writable.
func removeAll(p string) error {
	err := os.RemoveAll(p)
	if err == nil {
		return nil
	}
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o755)
		}
		return nil
	})
	return os.RemoveAll(p)
}

// syncState makes everything written to the state dir's filesystem durable
// (one syncfs instead of an fsync per file and directory). Concurrent calls
// (a daemon's requests) share syncs: each waits for one that started after
// it asked, so it is covered, and one syncfs serves them all.
func (s *Store) syncState() error {
	g := &s.syncs
	g.mu.Lock()
	defer g.mu.Unlock()
	g.requested++
	ticket := g.requested
	for g.completed < ticket {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		target := g.requested
		g.mu.Unlock()
		err := s.syncfs()
		g.mu.Lock()
		g.running = false
		g.completed, g.err = target, err
		g.cond.Broadcast()
	}
	return g.err
}

// syncGroup coalesces concurrent syncState calls.
type syncGroup struct {
	mu                   sync.Mutex
	cond                 *sync.Cond
	running              bool
	requested, completed uint64
	err                  error
}

// testHookSyncfs, if set, is called before each syncfs of the state dir.
var testHookSyncfs func(*Store)

// testHookWriteback, if set, runs at the start of each background writeback.
var testHookWriteback func(*Store)

func (s *Store) syncfs() error {
	if testHookSyncfs != nil {
		testHookSyncfs(s)
	}
	f, err := os.Open(s.state)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", s.state, err)
	}
	return nil
}

// startWriteback starts writing the state dir's filesystem's dirty data
// back (a syncfs in the background, when an add or import has written its
// content), so that the sync it waits for before registering finds most of
// it written: the blob commit (renames) or the disk-mode finish overlaps the
// writeback of the file data (the Go corpus's largest item: sync after the
// commit 130-180 ms -> 10 ms, the add 0.1-0.15 s shorter). It is not the
// durability sync (syncState is). At most one runs at a time; its errors
// are the later sync's to report.
func (s *Store) startWriteback() {
	if !s.writeback.CompareAndSwap(false, true) {
		return
	}
	s.writebacks.Add(1)
	go func() {
		defer s.writebacks.Done()
		defer s.writeback.Store(false)
		if testHookWriteback != nil {
			testHookWriteback(s)
		}
		if fd, err := unix.Open(s.state, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			unix.Syncfs(fd)
			unix.Close(fd)
		}
	}()
}

// FullPath turns a base name into a full store path.
func (s *Store) FullPath(base string) string { return s.storeDir + "/" + base }

// pathLock is a lock on one store path (disk mode), Nix style: the file
// <state>/locks/<hash>.lock is flocked; the releaser unlinks it and writes a
// deletion token ("d") so that a waiter that got the stale file retries.
type pathLock struct{ f *os.File }

func (s *Store) lockPath(base string) (*pathLock, error) {
	p := filepath.Join(s.state, "locks", base[:HashPartLen]+".lock")
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", base, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", base, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if st.Size() != 0 { // stale: its holder deleted it
			f.Close()
			continue
		}
		return &pathLock{f: f}, nil
	}
}

func (l *pathLock) unlock() {
	os.Remove(l.f.Name())
	l.f.Write([]byte("d"))
	l.f.Close()
}
