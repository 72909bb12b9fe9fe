#!/usr/bin/env bash
# bench/optimise.sh [CORPUS] — `storefs optimise` against `nix-store --optimise` on the same
# items, in one run. Both stores get the items without deduplication first; then each optimiser
# runs after dropping caches (as root where /proc/sys/vm/drop_caches is writable; warm otherwise).
# storefs runs with --links-min-size 0 (Nix links every file) and with Guix's default 8192.
# CORPUS: as for bench/add.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v nix-store >/dev/null || { echo "nix-store is needed (apt-get install nix-bin)" >&2; exit 1; }
source "$here/lib.sh"
trap bench_cleanup EXIT
bench_corpus "${1:-}"

bench_work

export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =\nauto-optimise-store = false' HOME=$work/home XDG_CACHE_HOME=$work/home/.cache
r=$work/nix; url="local?store=/gnu/store&real=$r/store&state=$r/state&log=$r/log"
nix-store --store "$url" --add "${items[@]}" >/dev/null
t_nix=$(bench_elapsed nix-store --store "$url" --optimise)
nix_line=$(grep -E 'freed by hard-linking' "$work/out" || true)
nix_links=$(find "$r/store/.links" -type f | wc -l); nix_syml=$(find "$r/store/.links" -type l | wc -l)
chmod -R u+w "$r"; rm -rf "$r"

declare -A t_sf line
for min in 0 8192; do
  st=$work/state-$min
  "$bin" --state "$st" init --mode disk --links-min-size "$min" >/dev/null
  "$bin" --state "$st" add --no-dedup "${items[@]}" >/dev/null
  t_sf[$min]=$(bench_elapsed "$bin" --state "$st" optimise)
  line[$min]=$(head -1 "$work/out")
  chmod -R u+w "$st"; rm -rf "$st"
done

printf '%s; %d items from %s\n' "$bench_cache" "${#items[@]}" "$corpus"
printf '%-40s %8.2f s   %s\n' "nix-store --optimise" "$t_nix" "$nix_line"
printf '%-40s %8s     (.links: %d files, %d symlinks; Nix 2.8 also links symlinks)\n' "" "" "$nix_links" "$nix_syml"
for min in 0 8192; do
  printf '%-40s %8.2f s   %s   (%.2fx faster than nix-store)\n' "storefs optimise (--links-min-size $min)" "${t_sf[$min]}" "${line[$min]}" "$(echo "$t_nix / ${t_sf[$min]}" | bc -l)"
done
