// Package integration holds storefs's end-to-end tests. They build the
// storefs binary once (TestMain) and drive it as a user would: generated
// trees compared with the real nix-store (when installed) and with committed
// golden values (always), bundles exchanged with Nix, strict NAR import,
// several processes on one store, and processes killed with SIGKILL.
//
// Run them with
//
//	go test ./integration/
//
// and regenerate testdata/golden.json with the real Nix (nix-store,
// nix-hash) after changing the tree generators:
//
//	go test ./integration/ -run TestGolden -update
//
// Nix is always used in throw-away stores under t.TempDir() (store URLs
// local?store=SD&real=R/store&state=R/state&log=R/log) with HOME, XDG dirs
// and NIX_CONFIG isolated; the real /nix/store is never written.
package integration
