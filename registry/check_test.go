package registry_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
	bolt "go.etcd.io/bbolt"
)

// Bucket names, spelled here because corrupting the file is what the API
// cannot do.
var (
	bPaths     = []byte("paths")
	bRefs      = []byte("refs")
	bReferrers = []byte("referrers")
	bDirs      = []byte("dirs")
	bMeta      = []byte("meta")
)

func edge(from, to string) []byte { return []byte(from + "\x00" + to) }

// tamper changes the registry file directly. The Registry opens the file per
// transaction, so nothing holds it between calls.
func tamper(t *testing.T, r *registry.Registry, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(r.Path(), 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("bolt.Open(%q) = %v", r.Path(), err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatalf("tampering with %s: %v", r.Path(), err)
	}
}

func mustCheck(t *testing.T, r *registry.Registry) []registry.Problem {
	t.Helper()
	probs, err := r.Check()
	if err != nil {
		t.Fatalf("Check() = %v; want no error", err)
	}
	return probs
}

// blobStore registers, in blob mode, base; app -> base with a tree
// root/{bin/{run}, share -> ...}; and a self-referring item with a file root.
type blobStore struct {
	base, app, self string
	binKey, rootKey registry.Digest
	binRec, rootRec []byte
	saved           []byte // a value a test broke, for its repair
}

func newBlobStore(t *testing.T, r *registry.Registry) *blobStore {
	t.Helper()
	s := &blobStore{base: registrytest.Name("base"), app: registrytest.Name("app"), self: registrytest.Name("self")}
	bin := &registry.Directory{Entries: []registry.Entry{
		{Name: "run", Node: registry.Node{Type: registry.TypeRegular, Executable: true, Size: 10, Key: digest("run")}},
	}}
	s.binRec, s.binKey = registry.EncodeDirectory(bin)
	root := &registry.Directory{Entries: []registry.Entry{
		{Name: "bin", Node: registry.Node{Type: registry.TypeDirectory, Key: s.binKey}},
		{Name: "share", Node: registry.Node{Type: registry.TypeSymlink, Target: "/gnu/store/" + s.base + "/share"}},
	}}
	s.rootRec, s.rootKey = registry.EncodeDirectory(root)
	app := registrytest.Info(s.app, s.base)
	app.Root = registry.Node{Type: registry.TypeDirectory, Key: s.rootKey}
	registrytest.MustRegister(t, r, []registry.Registration{
		{Info: registrytest.BlobInfo(s.base)},
		{Info: app, Dirs: map[registry.Digest][]byte{s.rootKey: s.rootRec, s.binKey: s.binRec}},
		{Info: registrytest.BlobInfo(s.self, s.self, s.base)},
	})
	return s
}

func TestCheckClean(t *testing.T) {
	for _, mode := range []string{"blob", "disk"} {
		t.Run(mode, func(t *testing.T) {
			r := registrytest.New(t, mode)
			if probs := mustCheck(t, r); len(probs) != 0 {
				t.Errorf("Check() of an empty registry = %v; want none", probs)
			}
			newBlobStore(t, r)
			if probs := mustCheck(t, r); len(probs) != 0 {
				t.Errorf("Check() = %v; want none", probs)
			}
		})
	}
}

func TestCheckFindsProblems(t *testing.T) {
	tests := []struct {
		name     string
		break_   func(s *blobStore, tx *bolt.Tx) error
		repair   func(s *blobStore, tx *bolt.Tx) error
		wantPath func(s *blobStore) string
		wantMsg  string
	}{
		{
			name:     "referrers mirror missing",
			break_:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bReferrers).Delete(edge(s.base, s.app)) },
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bReferrers).Put(edge(s.base, s.app), nil) },
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  "reference to " + registrytest.Name("base") + " has no mirror entry",
		},
		{
			name:     "refs mirror missing",
			break_:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bRefs).Delete(edge(s.app, s.base)) },
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bRefs).Put(edge(s.app, s.base), nil) },
			wantPath: func(s *blobStore) string { return s.base },
			wantMsg:  "referrer to " + registrytest.Name("app") + " has no mirror entry",
		},
		{
			name:     "self-reference mirror missing",
			break_:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bReferrers).Delete(edge(s.self, s.self)) },
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bReferrers).Put(edge(s.self, s.self), nil) },
			wantPath: func(s *blobStore) string { return s.self },
			wantMsg:  "has no mirror entry",
		},
		{
			name: "reference to a path that is not valid",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				return tx.Bucket(bRefs).Put(edge(s.app, nGhost), nil)
			},
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bRefs).Delete(edge(s.app, nGhost)) },
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  "names " + nGhost + ", which is not valid",
		},
		{
			name: "reference of a path that is not valid",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				if err := tx.Bucket(bRefs).Put(edge(nGhost, s.base), nil); err != nil {
					return err
				}
				return tx.Bucket(bReferrers).Put(edge(s.base, nGhost), nil)
			},
			repair: func(s *blobStore, tx *bolt.Tx) error {
				if err := tx.Bucket(bRefs).Delete(edge(nGhost, s.base)); err != nil {
					return err
				}
				return tx.Bucket(bReferrers).Delete(edge(s.base, nGhost))
			},
			wantPath: func(s *blobStore) string { return nGhost },
			wantMsg:  "reference entry for a path that is not valid",
		},
		{
			name: "referenced path invalidated without its referrer",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				s.saved = pathValue(tx, s.base)
				return tx.Bucket(bPaths).Delete([]byte(s.base))
			},
			repair: func(s *blobStore, tx *bolt.Tx) error {
				return tx.Bucket(bPaths).Put([]byte(s.base), s.saved)
			},
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  "which is not valid",
		},
		{
			name:     "malformed refs key",
			break_:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bRefs).Put([]byte("no-separator"), nil) },
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bRefs).Delete([]byte("no-separator")) },
			wantPath: func(*blobStore) string { return "no-separator" },
			wantMsg:  "malformed reference key",
		},
		{
			name:     "root directory record missing",
			break_:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bDirs).Delete(s.rootKey[:]) },
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bDirs).Put(s.rootKey[:], s.rootRec) },
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  registry.ErrMissingDirectory.Error(),
		},
		{
			name:     "child directory record missing",
			break_:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bDirs).Delete(s.binKey[:]) },
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bDirs).Put(s.binKey[:], s.binRec) },
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  registry.ErrMissingDirectory.Error(),
		},
		{
			name: "directory record corrupt",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				return tx.Bucket(bDirs).Put(s.binKey[:], s.binRec[:len(s.binRec)-1])
			},
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bDirs).Put(s.binKey[:], s.binRec) },
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  "corrupt",
		},
		{
			name: "directory record under the wrong key",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				other, _ := registry.EncodeDirectory(&registry.Directory{})
				return tx.Bucket(bDirs).Put(s.binKey[:], other)
			},
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bDirs).Put(s.binKey[:], s.binRec) },
			wantPath: func(s *blobStore) string { return s.app },
			wantMsg:  "stored under another digest",
		},
		{
			name: "path info corrupt",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				s.saved = pathValue(tx, s.base)
				return tx.Bucket(bPaths).Put([]byte(s.base), []byte{1, 2, 3})
			},
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bPaths).Put([]byte(s.base), s.saved) },
			wantPath: func(s *blobStore) string { return s.base },
			wantMsg:  "corrupt",
		},
		{
			name: "blob-mode path without a tree",
			break_: func(s *blobStore, tx *bolt.Tx) error {
				v := pathValue(tx, s.base)
				s.saved = slices.Clone(v)
				// A PathInfo ends with its root node; a regular root is tag,
				// size uvarint (42: one byte), 32-byte key. Replace it by tag 0.
				return tx.Bucket(bPaths).Put([]byte(s.base), append(v[:len(v)-34:len(v)-34], 0))
			},
			repair:   func(s *blobStore, tx *bolt.Tx) error { return tx.Bucket(bPaths).Put([]byte(s.base), s.saved) },
			wantPath: func(s *blobStore) string { return s.base },
			wantMsg:  "no tree recorded",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := registrytest.New(t, "blob")
			s := newBlobStore(t, r)
			tamper(t, r, func(tx *bolt.Tx) error { return tt.break_(s, tx) })
			probs := mustCheck(t, r)
			found := false
			for _, p := range probs {
				if p.Path == tt.wantPath(s) && strings.Contains(p.Msg, tt.wantMsg) {
					found = true
				}
			}
			if !found {
				t.Errorf("Check() = %v; want a problem for %q containing %q", probs, tt.wantPath(s), tt.wantMsg)
			}
			tamper(t, r, func(tx *bolt.Tx) error { return tt.repair(s, tx) })
			if probs := mustCheck(t, r); len(probs) != 0 {
				t.Errorf("Check() after repair = %v; want none", probs)
			}
		})
	}
}

// pathValue returns a copy of a stored PathInfo value.
func pathValue(tx *bolt.Tx, name string) []byte {
	v := tx.Bucket(bPaths).Get([]byte(name))
	return append([]byte(nil), v...)
}

// Check reports each problem; it does not stop at the first.
func TestCheckReportsEveryProblem(t *testing.T) {
	r := registrytest.New(t, "blob")
	s := newBlobStore(t, r)
	tamper(t, r, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bReferrers).Delete(edge(s.base, s.app)); err != nil {
			return err
		}
		if err := tx.Bucket(bRefs).Put(edge(s.self, nGhost), nil); err != nil {
			return err
		}
		return tx.Bucket(bDirs).Delete(s.binKey[:])
	})
	probs := mustCheck(t, r)
	for _, want := range []struct{ path, msg string }{
		{s.app, "has no mirror entry"},
		{s.self, "which is not valid"},
		{s.app, registry.ErrMissingDirectory.Error()},
	} {
		found := false
		for _, p := range probs {
			found = found || (p.Path == want.path && strings.Contains(p.Msg, want.msg))
		}
		if !found {
			t.Errorf("Check() = %v; want a problem for %q containing %q", probs, want.path, want.msg)
		}
	}
	tamper(t, r, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bReferrers).Put(edge(s.base, s.app), nil); err != nil {
			return err
		}
		if err := tx.Bucket(bRefs).Delete(edge(s.self, nGhost)); err != nil {
			return err
		}
		return tx.Bucket(bDirs).Put(s.binKey[:], s.binRec)
	})
}

// A disk-mode registry has no trees: Check does not ask for one.
func TestCheckDiskModeNeedsNoTree(t *testing.T) {
	r := registrytest.New(t, "disk")
	registrytest.MustRegister(t, r, registrytest.Reg(registrytest.Info(nA), registrytest.Info(nB, nA)))
	if probs := mustCheck(t, r); len(probs) != 0 {
		t.Errorf("Check() = %v; want none", probs)
	}
}
