// Package compare measures deduplication strategies side by side: it adds
// the same sources to one fresh, real store per strategy and measures each
// state dir (Build), or estimates from file hashes what each strategy would
// use for an existing store dir, read-only (Analyse).
//
// # Strategies
//
//	none        disk mode, added without deduplication (what `cp -a` costs)
//	links-8192  disk mode, `.links` hard links for files of 8192 bytes and more (Guix)
//	links-0     disk mode, every regular file linked (`nix-store --optimise`)
//	blob        blob mode: each distinct file content once
//	chunk       chunk mode: files under chunk.Threshold as blobs, larger ones
//	            as content-defined chunks, each distinct chunk once
//
// # Figures (Result)
//
// Logical bytes and files are those of the sources: the sizes and the number
// of their regular files, every PATH counted (an item given twice counts
// twice). Symlinks and directories count for neither.
//
// Bytes on disk are allocated blocks (st_blocks x 512) summed over every
// inode under the state dir once, hard links once, as `du -sB1` counts
// them; inodes are the distinct inodes under the state dir, as
// `du -s --inodes` counts them. The registry, the fixed files of a state
// dir (locks, tmp/) and the directories are all included: this is what the
// store costs. Areas break both down by top-level entry of the state dir
// (registry.db, store, blobs, manifests, chunks, and other).
//
// Files stored are the distinct contents a store keeps: in disk mode the
// distinct inodes of the items' regular files (a file linked through
// `.links` shares its inode with every copy), in blob and chunk mode the
// distinct file keys of the items, i.e. the files in blobs/ and manifests/
// plus the empty content when a source has an empty file (blob and chunk
// mode keep it in the tree record, without a file). Files deduplicated are
// the sources' regular files that got no content of their own: files minus
// files stored. The two add up to the files of the sources; an item given
// twice, or two PATHs with the same store path, are one item in every mode,
// so all the second one's files count as deduplicated, everywhere.
// (Counting linked files by nlink would call every file of links-0
// deduplicated, even a unique one: its .links entry makes nlink 2.)
//
// Stored bytes are the sizes (not the blocks) of the contents kept: the
// distinct item inodes' in disk mode, the blobs' and the chunks' in blob
// and chunk mode (a manifest is metadata, not content). Deduplicated bytes
// are logical bytes minus stored bytes: for links-0 exactly what
// `nix-store --optimise` reports freeing on the same items, symlinks aside
// (Nix 2.8 links those too); for chunk mode they include the parts that
// files share.
//
// Chunks are the files in chunks/ (chunk mode). Ratio is bytes on disk over
// those of none (nil when none is not among the strategies). Metadata is
// what indexes the data rather than holds it: registry.db, the whole
// manifests/ area (chunk mode) and the `.links` directory itself (its
// entries are hard links to data already counted with the items). Build
// time is the wall time of the adds (not the init and close of the store).
//
// # Estimates (Analyse)
//
// Analyse walks a store dir (each top-level entry not starting with "." is
// an item; `.links` is skipped), hashes every distinct inode once (the key
// of a file is nar.HashFile of its contents and executable bit, as the
// store's blob keys and `.links` names are; a file of chunk.Threshold
// bytes or more is also split by chunk.NewSplitter in the same read) and
// counts what each strategy would store, using these rules (B = 4096, the
// ext4 block):
//
//   - a stored regular file costs roundup(size, B) and one inode (an empty
//     file no bytes); a chunk likewise roundup(size, B), a manifest
//     roundup(chunk.ManifestSize(n), B);
//   - an item directory (disk modes) costs its measured st_blocks rounded up
//     to B, at least B, and one inode; a symlink one inode, and B when its
//     target has 60 bytes or more (shorter ones are inline in the inode);
//   - a directory the store makes (store/, .links, blobs/<2>/...) costs B
//     per 4096 bytes of ext4 entries (8 bytes plus the name rounded up to 4
//     per entry), at least B, and one inode;
//   - the registry is not estimated (it holds the trees of blob and chunk
//     mode, so those estimates are low by its size); metadata is the
//     estimated manifests and .links directory only.
//
// none stores every file; links-T the files under T each and every
// distinct key of T bytes and more once; blob every distinct non-empty key
// once; chunk the keys under chunk.Threshold as blobs and, per distinct
// larger key, one manifest and every distinct chunk once. Analyse opens
// everything read-only with O_NOATIME where allowed (so not even access
// times change) and never writes under the store dir.
package compare
