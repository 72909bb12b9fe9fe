# Sourced by add.sh, optimise.sh and gc.sh. bench_corpus [CORPUS] sets $corpus (absolute) and the array
# $items (its subdirectories). Without CORPUS it copies the top-level trees of the Go toolchain
# (`go env GOROOT`) into a temp dir. bench_cleanup removes that copy and whatever the script added
# to $bench_trash; the scripts call it from their one EXIT trap.
bench_trash=()

bench_corpus() {
  corpus=${1:-}
  if [ -z "$corpus" ]; then
    corpus=$(mktemp -d /var/tmp/storefs-corpus.XXXXXX)
    bench_trash+=("$corpus")
    for d in src lib misc api test; do
      [ -d "$(go env GOROOT)/$d" ] && cp -a "$(go env GOROOT)/$d" "$corpus/go-$d"
    done
  fi
  corpus=$(cd "$corpus" && pwd)
  items=()
  for d in "$corpus"/*/; do items+=("${d%/}"); done
  [ ${#items[@]} -gt 0 ] || { echo "no items in $corpus" >&2; exit 1; }
}

bench_cleanup() {
  local p
  for p in "${bench_trash[@]}"; do
    chmod -R u+w "$p" 2>/dev/null
    rm -rf "$p"
  done
}

# bench_drop flushes dirty data (so no step is timed writing back the previous one's), then drops
# the page cache where the machine lets us; $bench_cache says which of the two the figures are.
# (In some containers drop_caches is writable but changes nothing: then the figures are warm.)
if [ -w /proc/sys/vm/drop_caches ] && echo 3 2>/dev/null > /proc/sys/vm/drop_caches; then
  bench_cache="caches dropped before each timed step"
else
  bench_cache="warm cache"
fi
bench_drop() { sync; [ "$bench_cache" = "warm cache" ] || echo 3 > /proc/sys/vm/drop_caches; }

# bench_work makes the run's work dir $work (removed by bench_cleanup) and builds storefs from
# this tree as $bin in it.
bench_work() {
  work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/storefs-bench.XXXXXX")
  bench_trash+=("$work")
  bin=$work/storefs
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && go build -o "$bin" ./cmd/storefs)
}

# bench_elapsed CMD...: runs CMD after bench_drop, syncs, and prints the seconds both took (CMD's
# output goes to $work/out).
bench_elapsed() {
  local t0 t1
  bench_drop
  t0=$(date +%s.%N)
  "$@" > "$work/out" 2>&1
  sync
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
