#!/usr/bin/env bash
# bench/daemon.sh [MODES]  — many small items, embedded against through a daemon.
#
# Builds storefs, writes 1000 small items (a directory of 3 small files each, all distinct), then
# measures, for each mode in MODES (default "blob disk"), on fresh stores:
#   (a) embedded: one `storefs add` process adding all 1000 items (one invocation, 1000 PATHs);
#   (b) daemon:   a `storefs daemon` serving the store, 8 `storefs add` clients started at once,
#                 each adding 125 of the items (one invocation each).
# Prints items/second for both and the ratio daemon/embedded (> 1: the daemon is faster).
# Each measurement is repeated RUNS times (default 3) on a fresh store; the median is reported.
# Work happens in $BENCH_TMP (default /var/tmp). The page cache is warm (items were just written).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
modes=${1:-blob disk}
runs=${RUNS:-3}
nitems=1000
nclients=8
per=$((nitems / nclients))

work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/storefs-bench-daemon.XXXXXX")
dpid= dstatus=
stop_daemon() {
  # SIGTERM, wait up to 10 s, then SIGKILL
  [ -n "$dpid" ] || return 0
  if kill -0 "$dpid" 2>/dev/null; then
    kill -TERM "$dpid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$dpid" 2>/dev/null; then
      echo "daemon $dpid ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$dpid" 2>/dev/null || true
    fi
  fi
  dstatus=0
  wait "$dpid" 2>/dev/null || dstatus=$?
  dpid=
}
cpids=()   # running clients
cleanup() {
  for p in "${cpids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  stop_daemon
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin=$work/storefs
(cd "$here/.." && go build -o "$bin" ./cmd/storefs)

# 1000 items of 3 small distinct files (40 to ~2000 bytes)
src=$work/items
mkdir -p "$src"
filler=$(head -c 2048 /dev/zero | tr '\0' 'x')
items=()
for ((i = 0; i < nitems; i++)); do
  d=$(printf '%s/item-%04d' "$src" "$i")
  mkdir "$d"
  for j in 0 1 2; do
    n=$(( (i * 7 + j * 131) % 2000 ))
    printf 'item %d, file %d\n%s\n' "$i" "$j" "${filler:0:n}" > "$d/file-$j"
  done
  chmod +x "$d/file-2"
  items+=("$d")
done
printf 'items: %d directories of 3 files (%s), %d clients x %d items through the daemon, %d run(s) each\n' \
  "$nitems" "$(du -sh --apparent-size "$src" | cut -f1)" "$nclients" "$per" "$runs"

now() { date +%s.%N; }

# embedded MODE STATE: sets elapsed to the seconds of one `storefs add` of all items.
# (The measuring functions set a global instead of printing, so that they run in this shell and
# the EXIT trap always knows the daemon's pid.)
elapsed=
embedded() {
  local st=$2 t0 t1
  "$bin" --state "$st" init --mode "$1" >/dev/null
  t0=$(now)
  "$bin" --state "$st" --no-progress add "${items[@]}" > "$work/embedded.paths"
  t1=$(now)
  [ "$(wc -l < "$work/embedded.paths")" -eq "$nitems" ] || { echo "embedded add printed $(wc -l < "$work/embedded.paths") paths" >&2; exit 1; }
  elapsed=$(echo "$t1 - $t0" | bc -l)
}

# through_daemon MODE STATE: starts a daemon, sets elapsed to the seconds of 8 concurrent clients
through_daemon() {
  local st=$2 t0 t1 k fail=0
  "$bin" --state "$st" init --mode "$1" >/dev/null
  "$bin" --state "$st" --no-progress daemon 2> "$work/daemon.log" &
  dpid=$!
  for _ in $(seq 200); do
    grep -q 'storefs daemon: serving' "$work/daemon.log" 2>/dev/null && [ -S "$st/daemon.sock" ] && break
    kill -0 "$dpid" 2>/dev/null || { echo "the daemon exited:" >&2; cat "$work/daemon.log" >&2; exit 1; }
    sleep 0.05
  done
  [ -S "$st/daemon.sock" ] || { echo "the daemon did not start serving in 10 s:" >&2; cat "$work/daemon.log" >&2; exit 1; }
  t0=$(now)
  for ((k = 0; k < nclients; k++)); do
    "$bin" --state "$st" --no-progress add "${items[@]:k*per:per}" > "$work/client-$k.paths" 2> "$work/client-$k.err" &
    cpids+=($!)
  done
  for k in "${!cpids[@]}"; do
    if ! wait "${cpids[$k]}"; then echo "client $k failed: $(cat "$work/client-$k.err")" >&2; fail=1; fi
  done
  cpids=()
  t1=$(now)
  [ "$fail" -eq 0 ] || exit 1
  kill -0 "$dpid" 2>/dev/null || { echo "the daemon died during the run:" >&2; cat "$work/daemon.log" >&2; exit 1; }
  # the clients went through the daemon: it owns the registry, so --no-daemon is refused
  if "$bin" --state "$st" --no-daemon ls >/dev/null 2>&1; then echo "the daemon does not own the store?" >&2; exit 1; fi
  cat "$work"/client-*.paths | sort > "$work/daemon.paths"
  [ "$("$bin" --state "$st" ls | wc -l)" -eq "$nitems" ] || { echo "the daemon's store does not hold $nitems items" >&2; exit 1; }
  stop_daemon
  [ "$dstatus" -eq 0 ] || { echo "the daemon exited $dstatus after SIGTERM:" >&2; cat "$work/daemon.log" >&2; exit 1; }
  [ ! -e "$st/daemon.sock" ] || { echo "the daemon left its socket" >&2; exit 1; }
  elapsed=$(echo "$t1 - $t0" | bc -l)
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

printf '\n%-6s %-10s %10s %12s   %s\n' mode how seconds items/s "runs (s)"
for mode in $modes; do
  te=() td=()
  for ((r = 0; r < runs; r++)); do
    st=$work/state-e-$mode-$r
    embedded "$mode" "$st"
    te+=("$elapsed")
    chmod -R u+w "$st"; rm -rf "$st"
    st=$work/state-d-$mode-$r
    through_daemon "$mode" "$st"
    td+=("$elapsed")
    sort "$work/embedded.paths" | cmp -s - "$work/daemon.paths" || { echo "embedded and daemon stores got different paths" >&2; exit 1; }
    chmod -R u+w "$st"; rm -rf "$st"
  done
  me=$(median "${te[@]}") md=$(median "${td[@]}")
  re=$(echo "$nitems / $me" | bc -l) rd=$(echo "$nitems / $md" | bc -l)
  printf '%-6s %-10s %10.3f %12.0f   %s\n' "$mode" embedded "$me" "$re" "$(printf '%.3f ' "${te[@]}")"
  printf '%-6s %-10s %10.3f %12.0f   %s\n' "$mode" "daemon x$nclients" "$md" "$rd" "$(printf '%.3f ' "${td[@]}")"
  printf '%-6s ratio daemon/embedded (items/s): %.2f\n' "$mode" "$(echo "$rd / $re" | bc -l)"
done
