package registry

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors returned by the registry. Callers test them with errors.Is.
var (
	// ErrNotValid: the path is not registered.
	ErrNotValid = errors.New("path is not valid")
	// ErrLocked: another process held the registry for longer than the
	// lock timeout (a daemon or mount that owns the store, or a hung process).
	ErrLocked = errors.New("registry is locked by another process")
	// ErrNoRegistry: the state dir holds no registry (not initialised).
	ErrNoRegistry = errors.New("no registry (run `storefs init` first)")
	// ErrExists: Create found a registry already there.
	ErrExists = errors.New("a registry already exists")
	// ErrMissingDirectory: a directory record is absent.
	ErrMissingDirectory = errors.New("directory record missing")
)

// DefaultTimeout bounds how long a transaction waits for another process's
// file lock before failing with ErrLocked.
const DefaultTimeout = 30 * time.Second

// Options configure a Registry.
type Options struct {
	// Timeout for acquiring the file lock; DefaultTimeout when zero.
	Timeout time.Duration
}

// Registry is the handle on one registry file. It is safe for concurrent
// use by several goroutines; several processes coordinate through the file
// lock.
type Registry struct {
	path     string
	timeout  time.Duration
	storeDir string
	mode     string

	// mu guards held: transactions on the held database run under the read
	// lock, so Release (write lock) waits for them.
	mu   sync.RWMutex
	held *bolt.DB // non-nil while Hold is in effect
}

// Create makes a new registry file at path for a store with the given
// store dir and mode. It fails with ErrExists if the file exists. The file
// is built under a temporary name and linked into place, so a crash never
// leaves a half-made registry at path.
func Create(path, storeDir, mode string, opts Options) (*Registry, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%s: %w", path, ErrExists)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	os.Remove(tmp)
	defer os.Remove(tmp)
	r := newRegistry(tmp, opts)
	err := r.update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bucketMeta)
		e := enc{}
		e.uvarint(SchemaVersion)
		if err := m.Put(metaSchema, e.b); err != nil {
			return err
		}
		if err := m.Put(metaStoreDir, []byte(storeDir)); err != nil {
			return err
		}
		return m.Put(metaMode, []byte(mode))
	})
	if err != nil {
		return nil, err
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%s: %w", path, ErrExists)
		}
		return nil, err
	}
	r.path, r.storeDir, r.mode = path, storeDir, mode
	return r, nil
}

// Open opens an existing registry, checking its schema version.
func Open(path string, opts Options) (*Registry, error) {
	if st, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", path, ErrNoRegistry)
		}
		return nil, err
	} else if st.Size() == 0 {
		return nil, fmt.Errorf("%s: empty registry file (an interrupted init?): %w", path, errCorrupt)
	}
	r := newRegistry(path, opts)
	err := r.view(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return fmt.Errorf("%s: %w: no meta bucket", path, errCorrupt)
		}
		d := dec{b: m.Get(metaSchema)}
		if v := d.uvarint(); d.err != nil || v != SchemaVersion {
			return fmt.Errorf("%s: registry schema version %d, this storefs knows %d", path, v, SchemaVersion)
		}
		r.storeDir = string(m.Get(metaStoreDir))
		r.mode = string(m.Get(metaMode))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

func newRegistry(path string, opts Options) *Registry {
	t := opts.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	return &Registry{path: path, timeout: t}
}

// StoreDir is the logical store dir recorded at creation.
func (r *Registry) StoreDir() string { return r.storeDir }

// Mode is the store mode recorded at creation ("blob" or "disk").
func (r *Registry) Mode() string { return r.mode }

// Path is the registry file.
func (r *Registry) Path() string { return r.path }

// Hold opens the file and keeps it (and its exclusive lock) until Release:
// for a process that owns the store, such as a daemon or a mount.
func (r *Registry) Hold() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held != nil {
		return nil
	}
	db, err := r.open(false)
	if err != nil {
		return err
	}
	// Batch (used for registrations) waits this long for company before it
	// commits: long enough to group concurrent clients, short enough that
	// a lone client does not notice (bbolt's default is 10ms).
	db.MaxBatchDelay = time.Millisecond
	r.held = db
	return nil
}

// Release undoes Hold.
func (r *Registry) Release() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held == nil {
		return nil
	}
	err := r.held.Close()
	r.held = nil
	return err
}

func (r *Registry) open(readOnly bool) (*bolt.DB, error) {
	db, err := bolt.Open(r.path, 0o644, &bolt.Options{Timeout: r.timeout, ReadOnly: readOnly})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w (waited %s for another storefs process)", r.path, ErrLocked, r.timeout)
		}
		return nil, fmt.Errorf("open registry: %w", err)
	}
	return db, nil
}

// with runs fn on the held database, or on one opened for this call only.
func (r *Registry) with(readOnly bool, fn func(*bolt.DB) error) error {
	return r.withHeld(readOnly, func(db *bolt.DB, _ bool) error { return fn(db) })
}

// withHeld is with, also telling fn whether db is the held database.
func (r *Registry) withHeld(readOnly bool, fn func(db *bolt.DB, held bool) error) error {
	r.mu.RLock()
	if db := r.held; db != nil {
		defer r.mu.RUnlock()
		return fn(db, true)
	}
	r.mu.RUnlock()
	db, err := r.open(readOnly)
	if err != nil {
		return err
	}
	err = fn(db, false)
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

func (r *Registry) view(fn func(*bolt.Tx) error) error {
	return r.with(true, func(db *bolt.DB) error { return db.View(fn) })
}

func (r *Registry) update(fn func(*bolt.Tx) error) error {
	return r.with(false, func(db *bolt.DB) error { return db.Update(fn) })
}

// batch is update for idempotent fn: on a held registry (a daemon serving
// many clients) concurrent calls share one commit and one fsync (bbolt
// Batch, which may run fn more than once).
func (r *Registry) batch(fn func(*bolt.Tx) error) error {
	return r.withHeld(false, func(db *bolt.DB, held bool) error {
		if held {
			return db.Batch(fn)
		}
		return db.Update(fn)
	})
}

// Setting returns a store setting recorded with SetSetting ("" and false
// when absent).
func (r *Registry) Setting(key string) (string, bool, error) {
	var v []byte
	err := r.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta).Get(settingKey(key)); b != nil {
			v = append([]byte{}, b...)
		}
		return nil
	})
	return string(v), v != nil, err
}

// SetSetting records a store setting (e.g. the `.links` threshold) in the
// meta bucket.
func (r *Registry) SetSetting(key, value string) error {
	return r.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(settingKey(key), []byte(value))
	})
}

// ---- queries ----

// Get returns the PathInfo of a valid path, references included.
func (r *Registry) Get(name string) (*PathInfo, error) {
	var pi *PathInfo
	err := r.view(func(tx *bolt.Tx) (err error) {
		pi, err = getInfo(tx, name)
		return err
	})
	return pi, err
}

func getInfo(tx *bolt.Tx, name string) (*PathInfo, error) {
	v := tx.Bucket(bucketPaths).Get([]byte(name))
	if v == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNotValid)
	}
	pi, err := decodePathInfo(name, v)
	if err != nil {
		return nil, err
	}
	pi.References = scanPrefix(tx.Bucket(bucketRefs), name)
	return pi, nil
}

func scanPrefix(b *bolt.Bucket, name string) []string {
	var out []string
	p := refPrefix(name)
	c := b.Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		out = append(out, string(k[len(p):]))
	}
	return out
}

// IsValid reports whether name is registered.
func (r *Registry) IsValid(name string) (bool, error) {
	var ok bool
	err := r.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketPaths).Get([]byte(name)) != nil
		return nil
	})
	return ok, err
}

// Referrers returns the valid paths that refer to name (sorted).
func (r *Registry) Referrers(name string) ([]string, error) {
	var out []string
	err := r.view(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketPaths).Get([]byte(name)) == nil {
			return fmt.Errorf("%s: %w", name, ErrNotValid)
		}
		out = scanPrefix(tx.Bucket(bucketReferrers), name)
		return nil
	})
	return out, err
}

// List calls fn for every valid path in sorted order, after the name
// `after` ("" = from the start), until fn returns false. fn runs inside a read
// transaction: it must be quick and must not use the registry.
func (r *Registry) List(after string, fn func(name string) bool) error {
	return r.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketPaths).Cursor()
		var k []byte
		if after == "" {
			k, _ = c.First()
		} else {
			k, _ = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, _ = c.Next()
			}
		}
		for ; k != nil; k, _ = c.Next() {
			if !fn(string(k)) {
				return nil
			}
		}
		return nil
	})
}

// LookupHashPart returns the valid path whose hash part is hash32, or
// ErrNotValid.
func (r *Registry) LookupHashPart(hash32 string) (string, error) {
	var name string
	err := r.view(func(tx *bolt.Tx) error {
		p := []byte(hash32 + "-")
		k, _ := tx.Bucket(bucketPaths).Cursor().Seek(p)
		if k == nil || !bytes.HasPrefix(k, p) {
			return fmt.Errorf("%s: %w", hash32, ErrNotValid)
		}
		name = string(k)
		return nil
	})
	return name, err
}

// Closure returns the requisites of names (names included), ordered so that
// every path comes after its references (dependencies first; ties by name).
func (r *Registry) Closure(names []string) ([]string, error) {
	var out []string
	err := r.view(func(tx *bolt.Tx) error {
		refs := tx.Bucket(bucketRefs)
		paths := tx.Bucket(bucketPaths)
		state := map[string]int{} // 1 = visiting, 2 = done
		var visit func(n string) error
		visit = func(n string) error {
			switch state[n] {
			case 2:
				return nil
			case 1:
				return nil // a cycle: break it (only reachable via corrupt data)
			}
			if paths.Get([]byte(n)) == nil {
				return fmt.Errorf("%s: %w", n, ErrNotValid)
			}
			state[n] = 1
			for _, ref := range scanPrefix(refs, n) {
				if ref == n {
					continue
				}
				if err := visit(ref); err != nil {
					return err
				}
			}
			state[n] = 2
			out = append(out, n)
			return nil
		}
		sorted := slices.Clone(names)
		slices.Sort(sorted)
		for _, n := range sorted {
			if err := visit(n); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// Directory returns the directory record with the given digest.
func (r *Registry) Directory(d Digest) (*Directory, error) {
	var dir *Directory
	err := r.view(func(tx *bolt.Tx) (err error) {
		dir, err = getDirectory(tx, d)
		return err
	})
	return dir, err
}

func getDirectory(tx *bolt.Tx, d Digest) (*Directory, error) {
	v := tx.Bucket(bucketDirs).Get(d[:])
	if v == nil {
		return nil, fmt.Errorf("%x: %w", d[:8], ErrMissingDirectory)
	}
	return DecodeDirectory(v)
}

// Reader gives several queries one consistent snapshot and one file open.
type Reader struct{ tx *bolt.Tx }

// Get is Registry.Get within the snapshot.
func (rd Reader) Get(name string) (*PathInfo, error) { return getInfo(rd.tx, name) }

// Directory is Registry.Directory within the snapshot.
func (rd Reader) Directory(d Digest) (*Directory, error) { return getDirectory(rd.tx, d) }

// View runs fn with a read snapshot. fn must not do slow I/O.
func (r *Registry) View(fn func(Reader) error) error {
	return r.view(func(tx *bolt.Tx) error { return fn(Reader{tx}) })
}

// Page returns up to n valid paths after the name `after` ("" = from the
// start), in order, with their PathInfo (references not filled in): for
// listings that need each path's tree root, such as the mount's root.
func (r *Registry) Page(after string, n int) ([]*PathInfo, error) {
	var out []*PathInfo
	err := r.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketPaths).Cursor()
		var k, v []byte
		if after == "" {
			k, v = c.First()
		} else {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < n; k, v = c.Next() {
			pi, err := decodePathInfo(string(k), v)
			if err != nil {
				return err
			}
			out = append(out, pi)
		}
		return nil
	})
	return out, err
}
