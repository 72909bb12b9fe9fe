#!/usr/bin/env bash
# bench/gc.sh [CORPUS] — `storefs gc` against `nix-store --gc` collecting the same dead items, in
# one run. Every store (Nix, storefs blob, storefs disk) gets the same items, none rooted; then each
# collector runs after dropping caches (as root where /proc/sys/vm/drop_caches is writable; warm
# otherwise) and deletes them all.
#
# Items: SMALL (default 3000) generated small items (a directory with two files of 100 B to 4 KiB)
# and LARGE (default 4) generated items of one LARGE_MB (default 64) MiB random file each; with
# CORPUS, its subdirectories are added as items too (as for bench/add.sh). Work happens in
# $BENCH_TMP (default: a temp dir under /var/tmp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
command -v nix-store >/dev/null || { echo "nix-store is needed (apt-get install nix-bin)" >&2; exit 1; }
small=${SMALL:-3000} large=${LARGE:-4} large_mb=${LARGE_MB:-64}
corpus=${1:-}

trap bench_cleanup EXIT
bench_work

# the items
src=$work/src
mkdir -p "$src/small" "$src/large"
if command -v python3 >/dev/null; then
  python3 - "$src/small" "$small" <<'EOF'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(1)
for i in range(n):
    p = os.path.join(d, "s%05d" % i)
    os.mkdir(p)
    for f in ("a", "b"):
        with open(os.path.join(p, f), "wb") as fh:
            fh.write(b"%d %s\n" % (i, f.encode()) + r.randbytes(r.randint(100, 4096)))
EOF
else
  for ((i = 0; i < small; i++)); do
    p=$(printf '%s/s%05d' "$src/small" "$i"); mkdir "$p"
    head -c $((100 + RANDOM % 4000)) /dev/urandom > "$p/a"; echo "$i" > "$p/b"
  done
fi
for ((i = 0; i < large; i++)); do
  mkdir "$src/large/l$i"; head -c $((large_mb << 20)) /dev/urandom > "$src/large/l$i/data"
done
items=("$src"/small/* "$src"/large/*)
if [ -n "$corpus" ]; then for d in "$(cd "$corpus" && pwd)"/*/; do items+=("${d%/}"); done; fi
bytes=$(find "${items[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
printf 'items: %d (%d small, %d x %d MiB%s), %.2f GiB in %d files\n' "${#items[@]}" "$small" "$large" "$large_mb" \
  "${corpus:+, and the subdirectories of $corpus}" "$(echo "$bytes/1073741824" | bc -l)" "$(find "${items[@]}" -type f | wc -l)"


# Nix
export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =\nauto-optimise-store = false\nexperimental-features = nix-command' \
  HOME=$work/home XDG_CACHE_HOME=$work/home/.cache
mkdir -p "$work/home"
r=$work/nix; url="local?store=/gnu/store&real=$r/store&state=$r/state&log=$r/log"
nix-store --store "$url" --add "${items[@]}" > "$work/nix.paths"
n_nix=$(wc -l < "$work/nix.paths")
t_nix=$(bench_elapsed nix-store --store "$url" --gc)
nix_line=$(grep -E 'store paths deleted' "$work/out" || true)
left_nix=$(nix path-info --store "$url" --all 2>/dev/null | wc -l)
chmod -R u+w "$r"; rm -rf "$r"

declare -A t_sf line left
for mode in blob disk; do
  st=$work/state-$mode
  "$bin" --state "$st" init --mode "$mode" >/dev/null
  "$bin" --state "$st" --no-progress add "${items[@]}" > "$work/$mode.paths"
  cmp -s "$work/nix.paths" "$work/$mode.paths" || { echo "MISMATCH: storefs ($mode) and nix-store --add give different paths" >&2; exit 1; }
  t_sf[$mode]=$(bench_elapsed "$bin" --state "$st" gc)
  line[$mode]=$(head -1 "$work/out")
  left[$mode]=$("$bin" --state "$st" ls | wc -l)
  "$bin" --state "$st" verify >/dev/null 2>&1 || { echo "storefs verify failed after gc ($mode)" >&2; exit 1; }
  chmod -R u+w "$st"; rm -rf "$st"
done

printf '%s; each store held the same %d items, none rooted\n' "$bench_cache" "$n_nix"
printf '%-22s %8.2f s   %s   (%d paths left)\n' "nix-store --gc" "$t_nix" "$nix_line" "$left_nix"
for mode in blob disk; do
  printf '%-22s %8.2f s   %s   (%d paths left)   %.2fx the time of nix-store --gc (%.2fx faster)\n' "storefs gc ($mode)" "${t_sf[$mode]}" "${line[$mode]}" \
    "${left[$mode]}" "$(echo "${t_sf[$mode]} / $t_nix" | bc -l)" "$(echo "$t_nix / ${t_sf[$mode]}" | bc -l)"
done
