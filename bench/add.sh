#!/usr/bin/env bash
# bench/add.sh [CORPUS]  — `storefs add` of realistic multi-item trees against `cp -a` and
# `nix-store --add` of the same items, measured in one run, cold cache (as root; warm otherwise),
# both storefs modes, plus one core's sha256 throughput over the same bytes.
#
# CORPUS is a directory whose subdirectories are the items (e.g. built by the shared corpus
# builder: `build.sh small DIR` or `build.sh full DIR`). Without it, the top-level directories of
# the Go toolchain (`go env GOROOT`) are used. Work happens in $BENCH_TMP (default: a temp dir on
# the filesystem of /var/tmp), which needs room for 10 x BENCH_REPS copies of the corpus (every
# step's output is kept until the end; see below). Cold and warm rounds, each step BENCH_REPS times
# (median), and the peak RSS of a 100k-file add.
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

# Every step writes into a fresh directory and nothing is deleted until the end. On ext4 without a
# journal (this project's test machine), an inode freed less than 60 s ago, or 360 s if its inode
# table block is dirty (as it is while files are being created next to it), is skipped when a new
# inode is allocated, each skip costing a buffer lookup: after a large tree is deleted, creating
# files in the same block groups is slower for minutes (16% of a blob add's profile, and warm
# rounds more than cold ones, whose dropped buffers short-cut the check). So nothing is deleted
# between steps, and on such a filesystem the run first syncs and waits BENCH_SETTLE seconds
# (default 370 there, 0 elsewhere) for deletions made before it started.
# Each step runs BENCH_REPS times (default 3), cold and warm rounds interleaved; the median counts.
reps=${BENCH_REPS:-3}
settle=0
dev=$(findmnt -no SOURCE --target "$work" 2>/dev/null || true)
if [ "$(findmnt -no FSTYPE --target "$work" 2>/dev/null)" = ext4 ] && [ -n "$dev" ] &&
   ! compgen -G "/proc/fs/jbd2/$(basename "$dev")-*" >/dev/null; then
  settle=370   # a journalled ext4 has /proc/fs/jbd2/<dev>-<n>
fi
settle=${BENCH_SETTLE:-$settle}
if [ "$settle" -gt 0 ]; then
  echo "  (ext4 without a journal: waiting ${settle}s for earlier deletions to age; BENCH_SETTLE=0 skips)"
fi
sync; sleep "$settle"
# bench_warm CMD...: like bench_elapsed, without dropping caches (the sources are cached by then).
bench_warm() { local t0 t1; sync; t0=$(date +%s.%N); "$@" > "$work/out" 2>&1; sync; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

declare -A t
rounds=(cold warm); [ "$bench_cache" = "warm cache" ] && rounds=(warm)
timer() { if [ "$1" = cold ]; then echo bench_elapsed; else echo bench_warm; fi; }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

have_nix=false
if command -v nix-store >/dev/null; then
  have_nix=true
  export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =' HOME=$work/home XDG_CACHE_HOME=$work/home/.cache
fi

steps=(cp); $have_nix && steps+=(nix); steps+=(blob disk disk-nodedup)
declare -A all
for rep in $(seq "$reps"); do
  for round in "${rounds[@]}"; do
    tm=$(timer "$round")
    for step in "${steps[@]}"; do
      out=$work/$step-$round-$rep
      case $step in
      cp) v=$($tm bash -c 'mkdir -p "$0"; for i in "$@"; do cp -a "$i" "$0/"; done' "$out" "${items[@]}") ;;
      nix)
        url="local?store=/gnu/store&real=$out/store&state=$out/state&log=$out/log"
        mkdir -p "$out"
        v=$($tm nix-store --store "$url" --add "${items[@]}")
        nix-store --store "$url" --add "${items[@]}" > "$work/nix.paths" ;;
      *)
        flags=(); [ "$step" = disk-nodedup ] && flags=(--no-dedup)
        "$bin" --state "$out" init --mode "${step%-nodedup}" >/dev/null
        v=$($tm "$bin" --state "$out" add "${flags[@]}" "${items[@]}")
        "$bin" --state "$out" add "${items[@]}" > "$work/$step.paths"   # again: nothing new
        if [ -f "$work/nix.paths" ] && ! cmp -s "$work/nix.paths" "$work/$step.paths"; then
          echo "MISMATCH: storefs ($step) and nix-store --add give different paths" >&2; exit 1
        fi
        [ "$rep-$round" = "1-${rounds[0]}" ] && du -sh --apparent-size "$out" | awk -v m="$step" '{print "  storefs " m " state dir: " $1}' ;;
      esac
      all[$step-$round]+=" $v"
    done
  done
done
for k in "${!all[@]}"; do
  # shellcheck disable=SC2086
  t[$k]=$(median ${all[$k]})
done

# peak memory of a blob-mode add of 100k files (flat in the number of files: the tree is kept, the
# files' bytes are not); the files are made here, 100 directories of 1000 small distinct files
big=$work/files-100k
for d in $(seq 100); do
  mkdir -p "$big/d$d"
  (cd "$big/d$d" && seq 1000 | awk -v d="$d" '{f="f" $1; print d, $1 > f; close(f)}')
done
"$bin" --state "$work/state-100k" init --mode blob >/dev/null
rss=$( { /usr/bin/time -f '%M' "$bin" --state "$work/state-100k" add "$big" >/dev/null; } 2>&1 | tail -1)
printf 'peak RSS of storefs add (blob) of 100000 files: %d MiB\n' "$((rss / 1024))"

ratio() { if [ "$2" = na ] || [ -z "$2" ]; then echo "n/a"; else printf '%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }
for round in "${rounds[@]}"; do
  tcp=${t[cp-$round]} tnix=${t[nix-$round]:-na}
  printf '\n%s; seconds, median of %d (ratio = time / baseline time; < 1 is faster)\n' "$([ "$round" = cold ] && echo "cold: $bench_cache" || echo "warm: sources in the page cache")" "$reps"
  printf '%-28s %8s %10s %12s\n' "" "seconds" "vs cp -a" "vs nix-store"
  printf '%-28s %8.2f %10s %12s\n' "cp -a" "$tcp" 1.00 "$(ratio "$tcp" "$tnix")"
  [ "$tnix" != na ] && printf '%-28s %8.2f %10s %12s\n' "nix-store --add" "$tnix" "$(ratio "$tnix" "$tcp")" 1.00
  for mode in blob disk disk-nodedup; do
    printf '%-28s %8.2f %10s %12s\n' "storefs add ($mode)" "${t[$mode-$round]}" "$(ratio "${t[$mode-$round]}" "$tcp")" "$(ratio "${t[$mode-$round]}" "$tnix")"
  done
  printf '%-28s %8.2f %10s %12s   (%.0f MB/s)\n' "sha256, one core (ideal)" "$sha_time" "$(ratio "$sha_time" "$tcp")" "$(ratio "$sha_time" "$tnix")" "$(echo "$sha_rate/1000000" | bc -l)"
done
[ -f "$work/nix.paths" ] && echo "store paths: storefs (all modes) == nix-store --add"
# the nix stores are read-only: make them removable for bench_cleanup
chmod -R u+w "$work" 2>/dev/null || true
