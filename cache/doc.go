// Package cache is storefs's side of the Nix binary cache protocol: it
// serves a store as a binary cache over HTTP, writes a static one into a
// directory, and substitutes items from one (Nix's or its own).
//
// Terms, as in Nix:
//
//   - nix-cache-info: the cache's "Key: value" header file (StoreDir,
//     WantMassQuery, Priority). A StoreDir different from the store's is an
//     error: paths name their store dir in their hash.
//   - narinfo: `<hash32>.narinfo`, one item's metadata: StorePath, the URL
//     and Compression of its (compressed) NAR, FileHash/FileSize of that
//     file, NarHash/NarSize of the NAR itself, References (base names),
//     Deriver, Sig lines and an optional CA. Parsed and printed with go-nix
//     (pkg/narinfo); keys it does not know are dropped before parsing, as
//     Nix ignores them.
//   - fingerprint: what a Sig signs, "1;<path>;<narhash>;<narsize>;<refs>"
//     with the references as sorted full paths (Fingerprint: go-nix's own
//     assumes /nix/store).
//   - keys: ed25519 in Nix's text form, secret "NAME:base64(64 bytes)",
//     public "NAME:base64(32 bytes)", as `nix-store
//     --generate-binary-cache-key` writes them (GenerateKey, LoadSecretKey,
//     ParsePublicKey).
//
// The pieces:
//
//   - Handler serves a Source (the store, or the daemon that owns it):
//     GET and HEAD of /nix-cache-info, /<hash32>.narinfo and /nar/...; 404 for
//     what it does not hold. NARs are streamed, never held in memory. With
//     compression "none" the NAR is the file: FileHash and FileSize are the
//     NAR's hash and size, known from the registry, and the NAR is streamed
//     straight from the store. With xz or zstd the hash of the compressed
//     file cannot be known without compressing, so the first request for an
//     item compresses its NAR once, streaming, into CacheDir (named by the
//     NAR hash, so an entry never goes stale) together with a small file
//     holding its FileHash and FileSize; later requests serve that file.
//   - WriteDir writes a closure as a static binary cache (nix-cache-info,
//     narinfos, nar/<filehash32>.nar[.xz|.zst]) that any web server can serve
//     and Nix can read; each narinfo is written after its NAR and after its
//     references' narinfos, so a reader never sees a dangling one.
//   - Substituter fetches paths and their closures from an http(s):// or
//     file:// cache into a Target. Everything is checked before anything is
//     made valid: every narinfo's signature against the trusted keys, then
//     every NAR (downloaded in parallel, at most Jobs at a time) against
//     FileSize and FileHash, and by the store against NarSize and NarHash
//     while it imports the NAR as it arrives into its staging area
//     (store.PrepareImport: nothing of the store changes yet). Only then are
//     the items committed, references first. So a truncated, corrupt,
//     wrongly signed or wrongly hashed download leaves the store as it was.
//     A Target that cannot prepare (a daemon's client) has the NARs spooled
//     decompressed to SpoolDir and checked, then imported one by one.
//     Transient failures (5xx, 429, connection errors, a
//     body that stalls for StallTimeout) are retried with exponential
//     backoff; a 404 or a hash mismatch is not.
//
// Nothing here prints; the Handler and Substituter take a *slog.Logger.
package cache
