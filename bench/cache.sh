#!/usr/bin/env bash
# bench/cache.sh [CORPUS]  — substituting a closure of thousands of files over HTTP from
# `storefs serve`: by `storefs substitute` (blob and disk mode) and by `nix copy --from` into a
# fresh Nix store, from the same server in the same run, with compression none (NARs streamed
# from the store) and zstd (compressed once into serve's cache dir by an untimed warm-up
# fetch, then served from there). The other way too: the closure written as a file:// binary
# cache by `storefs copy --to` (from its disk store) and by `nix copy --to` (from the Nix store
# nix copy --from filled). Prints seconds, NAR MB/s, files/s and the ratio storefs/nix copy
# (< 1: storefs is faster).
#
# CORPUS is a directory whose subdirectories are the items (e.g. `build.sh small DIR` of the
# shared corpus builder); default: the Go toolchain's top-level trees. The closure is the items
# plus one small item referring to all of them. Needs nix-store and nix (Nix 2.8 here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
serve_pid=
cleanup() { [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null; bench_cleanup; }
trap cleanup EXIT
command -v nix-store >/dev/null && command -v nix >/dev/null || { echo "cache.sh needs nix-store and nix" >&2; exit 1; }
bench_corpus "${1:-}"
bench_work

export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command\nnarinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0'
export HOME=$work/home XDG_CACHE_HOME=$work/home/.cache
mkdir -p "$HOME"

src=$work/src
"$bin" --state "$src" init --mode disk --store-dir /nix/store >/dev/null
"$bin" --state "$src" --no-progress add "${items[@]}" > "$work/items.paths"
refs=(); while read -r p; do refs+=(--ref "$p"); done < "$work/items.paths"
echo "the bench closure" > "$work/top.txt"
top=$("$bin" --state "$src" --no-progress add "${refs[@]}" "$work/top.txt")
"$bin" --state "$src" cache key generate bench-cache-1 > "$work/secret"
"$bin" cache key public < "$work/secret" > "$work/public"
n_paths=$("$bin" --state "$src" closure "$top" | wc -l)
files=$(find "${items[@]}" -type f | wc -l)
nar_bytes=$("$bin" --state "$src" info --json $("$bin" --state "$src" closure "$top") | python3 -c 'import json,sys; print(sum(i["narSize"] for i in json.load(sys.stdin)))')
printf 'corpus: %s (%d paths in the closure, %d files, NARs %.1f MiB); %s\n' "$corpus" "$n_paths" "$files" "$(echo "$nar_bytes/1048576" | bc -l)" "$bench_cache"

start_serve() {
  [ -n "$serve_pid" ] && { kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; }
  "$bin" --state "$src" serve --listen 127.0.0.1:0 --sign-key "$work/secret" --compression "$1" > "$work/url" 2> "$work/serve.err" &
  serve_pid=$!
  for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.1; done
  url=$(cat "$work/url")
}

declare -A t
for comp in none zstd; do
  start_serve "$comp"
  if [ "$comp" != none ]; then   # warm-up: the compressed NARs are made once, untimed
    w=$work/warm; "$bin" --state "$w" init --mode blob --store-dir /nix/store >/dev/null
    t[warm-$comp]=$(bench_elapsed "$bin" --state "$w" substitute --from "$url" --trusted-key "$work/public" "$top")
    chmod -R u+w "$w"; rm -rf "$w"
  fi
  for mode in blob disk; do
    st=$work/st-$mode
    "$bin" --state "$st" init --mode "$mode" --store-dir /nix/store >/dev/null
    t[$mode-$comp]=$(bench_elapsed "$bin" --state "$st" substitute --from "$url" --trusted-key "$work/public" "$top")
    [ "$(wc -l < "$work/out")" -eq "$n_paths" ] || { echo "storefs substitute ($mode, $comp) printed:" >&2; cat "$work/out" >&2; exit 1; }
    "$bin" --state "$st" verify --contents >/dev/null 2>&1 || { echo "verify failed after substitute ($mode, $comp)" >&2; exit 1; }
    chmod -R u+w "$st"; rm -rf "$st"
  done
  r=$work/nix
  t[nix-$comp]=$(bench_elapsed nix copy --from "$url" --to "$r" --option trusted-public-keys "$(cat "$work/public")" "$top")
  [ "$(nix-store --store "$r" -q --hash "$top")" = "$("$bin" --state "$src" info --json "$top" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narHash"])')" ] \
    || { echo "nix copy ($comp) did not give the item; its output:" >&2; cat "$work/out" >&2; exit 1; }
  # the other way: the closure written as a file:// binary cache, by storefs from its store and
  # by nix copy --to from the Nix store it just filled
  t[to-nix-$comp]=$(bench_elapsed nix copy --store "$r" --to "file://$work/to-nix-$comp?compression=$comp" "$top")
  [ -f "$work/to-nix-$comp/$(basename "$top" | cut -c1-32).narinfo" ] || { echo "nix copy --to ($comp) wrote no narinfo; its output:" >&2; cat "$work/out" >&2; exit 1; }
  t[to-sf-$comp]=$(bench_elapsed "$bin" --state "$src" --no-progress copy --to "file://$work/to-sf-$comp" --sign-key "$work/secret" --compression "$comp" "$top")
  [ -f "$work/to-sf-$comp/$(basename "$top" | cut -c1-32).narinfo" ] || { echo "storefs copy --to ($comp) wrote no narinfo; its output:" >&2; cat "$work/out" >&2; exit 1; }
  chmod -R u+w "$r"; rm -rf "$r" "$HOME/.cache"
done

row() { # label seconds baseline
  printf '%-38s %8.2f %9.1f %10.0f %9s\n' "$1" "$2" "$(echo "$nar_bytes/1000000/$2" | bc -l)" "$(echo "$files/$2" | bc -l)" \
    "$(if [ -n "$3" ]; then printf '%.2f' "$(echo "$2/$3" | bc -l)"; else echo 1.00; fi)"
}
printf '\n%-38s %8s %9s %10s %9s\n' "from storefs serve (127.0.0.1)" "seconds" "NAR MB/s" "files/s" "vs nix"
for comp in none zstd; do
  row "nix copy --from ($comp)" "${t[nix-$comp]}" ""
  for mode in blob disk; do row "storefs substitute, $mode ($comp)" "${t[$mode-$comp]}" "${t[nix-$comp]}"; done
done
printf '%-38s %8.2f   (first fetch: compressing every NAR once into the cache dir)\n' "storefs substitute, blob (zstd, cold)" "${t[warm-zstd]}"
printf '\n%-38s %8s %9s %10s %9s\n' "to a file:// binary cache" "seconds" "NAR MB/s" "files/s" "vs nix"
for comp in none zstd; do
  row "nix copy --to ($comp)" "${t[to-nix-$comp]}" ""
  row "storefs copy --to, disk ($comp)" "${t[to-sf-$comp]}" "${t[to-nix-$comp]}"
done
