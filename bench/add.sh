#!/usr/bin/env bash
# bench/add.sh [CORPUS]  — `storefs add` of realistic multi-item trees against `cp -a` and
# `nix-store --add` of the same items, measured in one run, cold cache (as root; warm otherwise),
# both storefs modes, plus one core's sha256 throughput over the same bytes.
#
# CORPUS is a directory whose subdirectories are the items (e.g. built by the shared corpus
# builder: `build.sh small DIR` or `build.sh full DIR`). Without it, the top-level directories of
# the Go toolchain (`go env GOROOT`) are used. Work happens in $BENCH_TMP (default: a temp dir on
# the filesystem of /var/tmp), which needs room for about 4 copies of the corpus.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
trap bench_cleanup EXIT
bench_corpus "${1:-}"

bench_work

files=$(find "${items[@]}" -type f | wc -l)
bytes=$(find "${items[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d\n", s}')
printf 'corpus: %s (%d items, %d files, %.2f GiB)\n' "$corpus" "${#items[@]}" "$files" "$(echo "$bytes/1073741824" | bc -l)"


# one core's sha256 throughput, on bytes in memory
hasher=sha256sum; command -v openssl >/dev/null && hasher="openssl dgst -sha256"   # openssl uses SHA-NI, as Go does
sha=$( { head -c 1073741824 /dev/zero | (t0=$(date +%s.%N); $hasher >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l); } )
sha_rate=$(echo "1073741824 / $sha" | bc -l)
sha_time=$(echo "$bytes / $sha_rate" | bc -l)

t_cp=$(bench_elapsed bash -c 'mkdir -p "$0/cp"; for i in "$@"; do cp -a "$i" "$0/cp/"; done' "$work" "${items[@]}")
rm -rf "$work/cp"

t_nix=na
if command -v nix-store >/dev/null; then
  export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =' HOME=$work/home XDG_CACHE_HOME=$work/home/.cache
  r=$work/nix
  url="local?store=/gnu/store&real=$r/store&state=$r/state&log=$r/log"
  mkdir -p "$r"
  t_nix=$(bench_elapsed nix-store --store "$url" --add "${items[@]}")
  nix-store --store "$url" --add "${items[@]}" > "$work/nix.paths"
  chmod -R u+w "$r"; rm -rf "$r"
fi

declare -A t_sf
for mode in blob disk disk-nodedup; do
  st=$work/state-$mode
  flags=(); [ "$mode" = disk-nodedup ] && flags=(--no-dedup)
  "$bin" --state "$st" init --mode "${mode%-nodedup}" >/dev/null
  t_sf[$mode]=$(bench_elapsed "$bin" --state "$st" add "${flags[@]}" "${items[@]}")
  "$bin" --state "$st" add "${items[@]}" > "$work/$mode.paths"   # again: nothing new, warm
  if [ -f "$work/nix.paths" ] && ! cmp -s "$work/nix.paths" "$work/$mode.paths"; then
    echo "MISMATCH: storefs ($mode) and nix-store --add give different paths" >&2; exit 1
  fi
  du -sh --apparent-size "$st" | awk -v m="$mode" '{print "  storefs " m " state dir: " $1}'
  chmod -R u+w "$st"; rm -rf "$st"
done

ratio() { if [ "$2" = na ]; then echo "n/a"; else printf '%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }
printf '\n%s; seconds (ratio = time / baseline time; < 1 is faster)\n' "$bench_cache"
printf '%-28s %8s %10s %12s\n' "" "seconds" "vs cp -a" "vs nix-store"
printf '%-28s %8.2f %10s %12s\n' "cp -a" "$t_cp" 1.00 "$(ratio "$t_cp" "$t_nix")"
[ "$t_nix" != na ] && printf '%-28s %8.2f %10s %12s\n' "nix-store --add" "$t_nix" "$(ratio "$t_nix" "$t_cp")" 1.00
for mode in blob disk disk-nodedup; do
  printf '%-28s %8.2f %10s %12s\n' "storefs add ($mode)" "${t_sf[$mode]}" "$(ratio "${t_sf[$mode]}" "$t_cp")" "$(ratio "${t_sf[$mode]}" "$t_nix")"
done
printf '%-28s %8.2f %10s %12s   (%.0f MB/s)\n' "sha256, one core (ideal)" "$sha_time" "$(ratio "$sha_time" "$t_cp")" "$(ratio "$sha_time" "$t_nix")" "$(echo "$sha_rate/1000000" | bc -l)"
[ -f "$work/nix.paths" ] && echo "store paths: storefs (both modes) == nix-store --add"
