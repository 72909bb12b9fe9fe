package compare

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/store"
)

// inode identifies a file across hard links.
type inode struct{ dev, ino uint64 }

func statOf(fi fs.FileInfo) (*syscall.Stat_t, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no stat_t (not a Unix filesystem?)", fi.Name())
	}
	return st, nil
}

// areaOf is the area a path relative to the state dir belongs to.
func areaOf(rel string) string {
	top, _, _ := strings.Cut(rel, "/")
	switch top {
	case "registry.db", "store", "blobs", "manifests", "chunks":
		return top
	}
	return "other"
}

// sourceFacts are what a measurement needs to know of the sources.
type sourceFacts struct {
	files, bytes int64
	empty        [2]bool // an empty file, not executable / executable
}

// measure fills in the on-disk figures of the store built in state for
// strategy s, from a walk of the state dir (after the store was closed).
func measure(state string, s Strategy, src sourceFacts, r *Result) error {
	seen := map[inode]bool{}
	items := map[inode]int64{} // disk mode: the items' regular files, their sizes
	areas := map[string]Usage{}
	var keys map[string]bool // blob, chunk: file keys stored as files
	if s.mode() != store.ModeDisk {
		keys = map[string]bool{}
	}
	links := filepath.Join("store", ".links")
	err := filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, err := statOf(fi)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(state, p)
		rel = filepath.ToSlash(rel)
		area := areaOf(rel)
		reg := fi.Mode().IsRegular()
		switch {
		case keys != nil && reg && (area == "blobs" || area == "manifests"):
			keys[d.Name()] = true
			if area == "blobs" {
				r.StoredBytes += fi.Size()
			}
		case keys != nil && reg && area == "chunks":
			r.Chunks++
			r.StoredBytes += fi.Size()
		case keys == nil && reg && area == "store" && !strings.HasPrefix(rel, links+"/"):
			items[inode{uint64(st.Dev), st.Ino}] = fi.Size()
		}
		in := inode{uint64(st.Dev), st.Ino}
		if seen[in] {
			return nil
		}
		seen[in] = true
		bytes := st.Blocks * 512
		u := areas[area]
		u.add(bytes)
		areas[area] = u
		r.DiskBytes += bytes
		r.Inodes++
		if area == "registry.db" || area == "manifests" || rel == links {
			r.MetadataBytes += bytes
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("measuring %s: %w", state, err)
	}
	r.Areas = areas
	if keys == nil {
		r.FilesStored = int64(len(items))
		for _, size := range items {
			r.StoredBytes += size
		}
	} else {
		r.FilesStored = int64(len(keys))
		for i, exec := range []bool{false, true} {
			if k := emptyKey(exec).String(); src.empty[i] && !keys[k] {
				r.FilesStored++ // kept in the tree record, no file
			}
		}
	}
	r.Files, r.LogicalBytes = src.files, src.bytes
	r.FilesDeduplicated = src.files - r.FilesStored
	r.DeduplicatedBytes = src.bytes - r.StoredBytes
	return nil
}

// emptyKey is the key of an empty file.
func emptyKey(exec bool) cas.Key {
	k, err := fileKey(exec, 0, strings.NewReader(""))
	if err != nil {
		panic("compare: the key of an empty file: " + err.Error())
	}
	return k
}

// removeTree removes dir and everything below it, making read-only
// directories (disk-mode items are 0555) writable first.
func removeTree(dir string) error {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	return os.RemoveAll(dir)
}
