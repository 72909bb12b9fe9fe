# Sourced by the bench scripts. bench_corpus [CORPUS] sets $corpus (absolute) and the array
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
