#!/usr/bin/env bash
# bench/run.sh  — start-up cost of `storefs run -- true` against `unshare -rm true`.
#
# Builds storefs, makes a blob-mode and a disk-mode store holding one small item, then times RUNS
# (default 50) runs of each of: `unshare -rm true` (a bare user + mount namespace, the floor),
# `storefs run -- true` on each store, and `storefs --version`-like start of storefs itself
# (`storefs ls`) as the cost of one Go process. Prints the mean per run in ms, the ratio to
# unshare and the overhead over it; the issue's target is under 100 ms of overhead. STOREFS_BIN
# uses a binary built beforehand (e.g. to run this as a user without a Go toolchain). Root or not:
# as root, storefs run makes a mount namespace only; as a user, the user namespace too (the
# stores then must belong to that user; run it as that user). Blob mode needs a usable /dev/fuse.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
trap bench_cleanup EXIT
runs=${RUNS:-50}
if [ -n "${STOREFS_BIN:-}" ]; then # a binary built beforehand (to run as a user without Go set up)
  work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/storefs-bench.XXXXXX"); bench_trash+=("$work")
  bin=$work/storefs; cp "$STOREFS_BIN" "$bin"
else
  bench_work
fi
mkdir -p "$work/item" && echo hello > "$work/item/f"
for m in blob disk; do
  "$bin" --state "$work/$m" init --mode "$m" >/dev/null
  "$bin" --state "$work/$m" add "$work/item" >/dev/null
done

# mean_ms CMD...: the mean wall time of RUNS runs of CMD, in ms
mean_ms() {
  local t0 t1
  "$@" >/dev/null 2>&1 # warm-up (and a check that it works)
  t0=$(date +%s%N)
  for _ in $(seq "$runs"); do "$@" >/dev/null 2>&1; done
  t1=$(date +%s%N)
  echo "($t1 - $t0) / 1000000 / $runs" | bc -l
}
if ! "$bin" --state "$work/blob" run -- true 2>"$work/err"; then
  echo "storefs run fails here: $(cat "$work/err")" >&2; exit 1
fi
base=$(mean_ms unshare -rm true)
ls_ms=$(mean_ms "$bin" --state "$work/disk" ls)
blob=$(mean_ms "$bin" --state "$work/blob" run -- true)
disk=$(mean_ms "$bin" --state "$work/disk" run -- true)
echo "storefs run start-up, $runs runs each, $(nproc) cores, uid $(id -u), $(uname -r)"
printf '%-34s %9s %9s %12s\n' what "ms/run" ratio "overhead ms"
row() { printf '%-34s %9.1f %9.2f %12.1f\n' "$1" "$2" "$(echo "$2 / $base" | bc -l)" "$(echo "$2 - $base" | bc -l)"; }
row "unshare -rm true" "$base"
row "storefs ls (one Go process)" "$ls_ms"
row "storefs run -- true (disk)" "$disk"
row "storefs run -- true (blob, FUSE)" "$blob"
