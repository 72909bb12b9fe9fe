#!/usr/bin/env bash
# The whole storefs test suite: installs what the tests need when it is
# missing (fuse3 for real mounts, nix-bin for comparisons against the real
# nix-store), then runs every Go test (the libraries with the race
# detector), a short fuzz run of the NAR reader, and fails if a test left a
# mount behind. Used as is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need[*]}" >&2
    (apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; })
  else
    echo "test.sh: ${need[*]} missing and cannot be installed (not root or no apt-get); the tests that need them will skip" >&2
  fi
fi

# storefs mounts the tests left behind (under the temp dir): there must be none.
leftover_mounts() { awk -v t="${TMPDIR:-/tmp}/" '$3 == "fuse.storefs" && index($2, t) == 1 {print $2}' /proc/mounts; }
before=$(leftover_mounts)

go vet ./...
# The libraries under the race detector; the CLI scripts and the integration
# tests run storefs binaries (built without it) as a user would.
go test -race -count=1 -timeout 8m $(go list ./... | grep -v -e /cmd/ -e /integration)
go test -count=1 -timeout 8m ./cmd/... ./integration/...
go test -run='^$' -fuzz=FuzzReader -fuzztime="${STOREFS_FUZZTIME:-15s}" ./nar/

after=$(leftover_mounts)
if [ "$after" != "$before" ]; then
  echo "test.sh: the tests left storefs mounts behind:" >&2
  comm -13 <(echo "$before") <(echo "$after") >&2
  exit 1
fi
