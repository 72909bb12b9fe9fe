// Package cas is content addressing on disk.
//
// Blobs is the blob area of a blob-mode store: one read-only plain file per
// distinct file content, at <dir>/<k[0:2]>/<k>, where k is the Key in
// nix-base32. A Key is the SHA-256 of the file's single-file NAR, so the
// executable bit is part of a blob's identity and a blob's name equals the
// name of the `.links` entry Nix and Guix would give the same file. Blobs are
// written to a temporary file on the same filesystem and renamed into place;
// a blob that is already present is never rewritten. Blob files are 0444, or
// 0555 when executable.
package cas
