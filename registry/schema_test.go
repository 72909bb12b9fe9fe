package registry_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
	bolt "go.etcd.io/bbolt"
)

func TestCreateAndOpenRecordMeta(t *testing.T) {
	for _, mode := range []string{"blob", "disk"} {
		r := registrytest.New(t, mode)
		if r.StoreDir() != registrytest.StoreDir || r.Mode() != mode {
			t.Errorf("Create: StoreDir(), Mode() = %q, %q; want %q, %q", r.StoreDir(), r.Mode(), registrytest.StoreDir, mode)
		}
		r2 := mustOpen(t, r.Path(), 0)
		if r2.StoreDir() != registrytest.StoreDir || r2.Mode() != mode || r2.Path() != r.Path() {
			t.Errorf("Open: StoreDir(), Mode(), Path() = %q, %q, %q; want %q, %q, %q",
				r2.StoreDir(), r2.Mode(), r2.Path(), registrytest.StoreDir, mode, r.Path())
		}
	}
	// Another store dir is recorded as given.
	path := filepath.Join(t.TempDir(), "registry.db")
	if _, err := registry.Create(path, "/nix/store", "disk", registry.Options{}); err != nil {
		t.Fatalf("Create(%q) = %v", path, err)
	}
	if r := mustOpen(t, path, 0); r.StoreDir() != "/nix/store" {
		t.Errorf("Open(%q).StoreDir() = %q; want /nix/store", path, r.StoreDir())
	}
}

func uvarint(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func TestOpenRefusesOtherSchema(t *testing.T) {
	tests := []struct {
		name    string
		value   []byte // nil: delete the key
		wantMsg string
	}{
		{"newer", uvarint(registry.SchemaVersion + 1), "schema version 2"},
		{"much newer", uvarint(300), "schema version 300"},
		{"zero", uvarint(0), "schema version 0"},
		{"missing", nil, "schema version"},
		{"garbage", []byte{0x80}, "schema version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := registrytest.New(t, "disk")
			registrytest.MustRegister(t, r, registrytest.Reg(registrytest.Info(nA)))
			tamper(t, r, func(tx *bolt.Tx) error {
				if tt.value == nil {
					return tx.Bucket(bMeta).Delete([]byte("schema"))
				}
				return tx.Bucket(bMeta).Put([]byte("schema"), tt.value)
			})
			r2, err := registry.Open(r.Path(), registry.Options{})
			if err == nil {
				t.Fatalf("Open(schema %x) = %v, nil; want an error", tt.value, r2)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Open(schema %x) = %v; want an error mentioning %q", tt.value, err, tt.wantMsg)
			}
			if errors.Is(err, registry.ErrNoRegistry) || errors.Is(err, registry.ErrLocked) {
				t.Errorf("Open(schema %x) = %v; want neither ErrNoRegistry nor ErrLocked", tt.value, err)
			}
			tamper(t, r, func(tx *bolt.Tx) error {
				return tx.Bucket(bMeta).Put([]byte("schema"), uvarint(registry.SchemaVersion))
			})
			mustValid(t, mustOpen(t, r.Path(), 0), nA, true)
		})
	}
}

func TestOpenRefusesNoMeta(t *testing.T) {
	r := registrytest.New(t, "disk")
	var saved [][2][]byte
	tamper(t, r, func(tx *bolt.Tx) error {
		tx.Bucket(bMeta).ForEach(func(k, v []byte) error {
			saved = append(saved, [2][]byte{append([]byte(nil), k...), append([]byte(nil), v...)})
			return nil
		})
		return tx.DeleteBucket(bMeta)
	})
	if _, err := registry.Open(r.Path(), registry.Options{}); err == nil {
		t.Errorf("Open(no meta bucket) = nil error; want an error")
	}
	tamper(t, r, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bMeta)
		if err != nil {
			return err
		}
		for _, kv := range saved {
			if err := b.Put(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	mustOpen(t, r.Path(), 0)
}

func TestOpenMissing(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{
		filepath.Join(dir, "registry.db"),
		filepath.Join(dir, "no-such-dir", "registry.db"),
	} {
		r, err := registry.Open(path, registry.Options{})
		if !errors.Is(err, registry.ErrNoRegistry) {
			t.Errorf("Open(%q) = %v, %v; want ErrNoRegistry", path, r, err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open(%q) created the file (stat: %v); want it left absent", path, err)
		}
	}
}

func TestCreateExisting(t *testing.T) {
	r := registrytest.New(t, "blob")
	registrytest.MustRegister(t, r, registrytest.Reg(registrytest.BlobInfo(nA)))
	for _, mode := range []string{"blob", "disk"} {
		r2, err := registry.Create(r.Path(), "/nix/store", mode, registry.Options{})
		if !errors.Is(err, registry.ErrExists) {
			t.Errorf("Create(existing registry, %q) = %v, %v; want ErrExists", mode, r2, err)
		}
	}
	// The existing registry is untouched.
	r3 := mustOpen(t, r.Path(), 0)
	if r3.StoreDir() != registrytest.StoreDir || r3.Mode() != "blob" {
		t.Errorf("Open after a refused Create: StoreDir(), Mode() = %q, %q; want %q, blob", r3.StoreDir(), r3.Mode(), registrytest.StoreDir)
	}
	mustValid(t, r3, nA, true)

	// Any existing file is refused and left as it was, even an empty one.
	for _, content := range []string{"", "not a database"} {
		path := filepath.Join(t.TempDir(), "registry.db")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := registry.Create(path, registrytest.StoreDir, "disk", registry.Options{}); !errors.Is(err, registry.ErrExists) {
			t.Errorf("Create(file holding %q) = %v; want ErrExists", content, err)
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != content {
			t.Errorf("after Create, file holds %q, %v; want %q untouched", got, err, content)
		}
	}
}

func TestCreateInMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-dir", "registry.db")
	r, err := registry.Create(path, registrytest.StoreDir, "disk", registry.Options{})
	if err == nil || errors.Is(err, registry.ErrExists) {
		t.Errorf("Create(%q) = %v, %v; want an error other than ErrExists", path, r, err)
	}
}
