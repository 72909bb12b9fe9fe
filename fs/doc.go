// Package fs presents a blob-mode store as a read-only FUSE filesystem
// (go-fuse v2, imported as gofs): the root lists the valid store paths,
// each item is its tree from the registry, and file contents come from the
// blob area.
//
// Consistency and caching: items are immutable, so entries and attributes
// inside items have long kernel timeouts, file data is kept in the page
// cache across opens (FOPEN_KEEP_CACHE), directory listings inside items are
// cached (FOPEN_CACHE_DIR) and symlinks are cached by the kernel. The root
// changes: its listing is never cached and failed lookups are not cached
// (no negative timeout), so a path registered while mounted appears at once;
// a path that disappears (GC) is removed from the kernel's caches with
// NotifyDelete/NotifyEntry, sent from a goroutine of its own, never from
// inside a FUSE handler (that can deadlock the kernel).
//
// Identity (inode.go): a regular file's inode number comes from its blob
// key, so identical files in different items are one inode with one page
// cache; directories and symlinks get one inode per (item, path). Numbers are
// the same across remounts, and readdir's d_ino equals stat's st_ino.
//
// Opens: the kernel opens files and directories without a request
// (noopendir.go), and reads the pages it has not cached through
// fileNode.Read, which preads the blob. With Options.OpenFiles (always in
// chunk mode) every open is a request, and reads go through passthrough to
// the blob file where the kernel and privileges allow (root, Linux 6.9+),
// otherwise they are spliced from the open blob descriptor. No registry
// transaction happens per read.
//
// Memory: every node below the root is created with NewInode (not
// persistent), so go-fuse forgets it when the kernel does.
//
// Deadlocks: the process serving the mount must not itself access the mount
// (go-fuse's "Deadlocks" notes); tests exec programs on it from other
// processes.
package fs
