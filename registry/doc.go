// Package registry is storefs's database of valid store paths, kept in one
// bbolt file (<state>/registry.db).
//
// Vocabulary (as in Nix and Guix): a store path is *valid* when it is
// registered here; its *references* are the store paths it refers to and its
// *referrers* the valid paths that refer to it. The *closure* of a path is the
// path plus everything reachable through references. Paths are stored by
// their base name ("<hash32>-<name>"): the store dir is fixed per store and
// recorded once in the meta bucket.
//
// Schema (bucket names in schema.go, every encoding in codec.go):
//
//	meta      : "schema"   -> uvarint schema version (SchemaVersion)
//	            "storeDir" -> the logical store dir, e.g. "/gnu/store"
//	            "mode"     -> "blob" or "disk"
//	            "setting:<name>" -> a store setting, e.g. "setting:linksMinSize" -> "8192"
//	paths     : <base name>                     -> PathInfo (version byte first)
//	refs      : <referrer> 0x00 <reference>     -> empty   (prefix scan = references)
//	referrers : <reference> 0x00 <referrer>     -> empty   (prefix scan = referrers)
//	dirs      : <sha256 of the record, 32 B>    -> Directory record (blob mode)
//
// A base name never contains NUL, so the 0x00 separator makes prefix scans
// exact. Sorting by key sorts paths as `ls` shows them (the hash part is a
// fixed 32 characters).
//
// Invariants (checked by Check after every registry test and by `storefs
// verify`): every reference of a valid path is valid; refs and referrers
// mirror each other; every directory a valid path names (blob mode) is
// present, recursively.
//
// Locking: bbolt allows one read-write process per file and holds the file
// lock for as long as the file is open. A Registry therefore opens the file
// for each transaction and closes it afterwards, unless Hold was called (a
// daemon or a mount that owns the store). Several storefs processes working on
// one store then wait only for each other's short transactions. No hashing or
// file I/O happens inside a transaction.
package registry
