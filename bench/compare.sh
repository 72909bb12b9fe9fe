#!/usr/bin/env bash
# bench/compare.sh [CORPUS] — `storefs compare` of every strategy on a real corpus, against a
# plain `cp -a` of it in the same run (its `du` and its time are the baseline none should match),
# then `storefs compare --analyse` of the same corpus (the estimates, read-only, next to the built
# figures) and of ANALYSE (default: the pyenv versions dir, ~100k files of 9 CPythons; set
# ANALYSE= to skip), timed, with its files per second and peak RSS.
# CORPUS default: three CPython builds (shared/corpus/build.sh small: several versions of one
# package), else the Go toolchain's trees as bench/add.sh takes them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
trap bench_cleanup EXIT

bench_work
corpus_arg=${1:-}
builder=$here/../../shared/corpus/build.sh
pyenv=${PYENV_ROOT:-$HOME/.pyenv}/versions
if [ -z "$corpus_arg" ] && [ -f "$builder" ] && [ -d "$pyenv" ]; then
  if bash "$builder" small "$work/corpus" >/dev/null 2>&1; then corpus_arg=$work/corpus; rm -f "$work/corpus/.complete"; fi
fi
bench_corpus "$corpus_arg"
analyse=${ANALYSE-$pyenv}

files=$(find "${items[@]}" -type f | wc -l)
logical=$(find "${items[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
printf '%s; %d items, %d files, %.2f MiB from %s\n\n' "$bench_cache" "${#items[@]}" "$files" "$(echo "$logical / 1048576" | bc -l)" "$corpus"

mkdir "$work/cp"
t_cp=$(bench_elapsed cp -a "${items[@]}" "$work/cp/")
du_cp=$(du -s -B1 "$work/cp" | cut -f1)
chmod -R u+w "$work/cp"; rm -rf "$work/cp"
printf 'baseline: cp -a of the items  %.2f MiB on disk (du), %.2f s\n\n' "$(echo "$du_cp / 1048576" | bc -l)" "$t_cp"

bench_drop
TMPDIR=$work "$bin" compare --json "${items[@]}" > "$work/compare.json" 2>"$work/compare.err" || { cat "$work/compare.err" >&2; exit 1; }
TMPDIR=$work "$bin" compare --analyse --json "$corpus" > "$work/analyse.json" 2>"$work/analyse.err" || { cat "$work/analyse.err" >&2; exit 1; }
python3 - "$work/compare.json" "$work/analyse.json" "$du_cp" "$t_cp" <<'EOF'
import json, sys
built, est = json.load(open(sys.argv[1])), {r["strategy"]: r for r in json.load(open(sys.argv[2]))}
du_cp, t_cp = int(sys.argv[3]), float(sys.argv[4])
mib = lambda b: "%.2f" % (b / 1048576)
print("storefs compare (built; ratio = on disk / none's; vs cp -a = on disk / cp -a's du; time / cp -a's)")
print("%-11s %10s %10s %6s %8s %8s %8s %9s %10s %8s %7s %8s %10s" % ("strategy", "logical", "on disk", "ratio", "vs cp -a", "inodes", "stored", "dedup", "dedup MiB", "meta MiB", "time s", "vs cp -a", "estimate"))
for r in built:
    e = est.get(r["strategy"])
    print("%-11s %10s %10s %6.3f %8.3f %8d %8d %9d %10s %8s %7.2f %8.2f %10s" % (
        r["strategy"], mib(r["logicalBytes"]), mib(r["diskBytes"]), r["ratio"], r["diskBytes"] / du_cp, r["inodes"],
        r["filesStored"], r["filesDeduplicated"], mib(r["deduplicatedBytes"]), mib(r["metadataBytes"]),
        r["buildSeconds"], r["buildSeconds"] / t_cp, mib(e["diskBytes"]) if e else "-"))
print("(estimate: compare --analyse of the same corpus, MiB on disk it predicts without building)")
EOF

if [ -n "$analyse" ] && [ -d "$analyse" ]; then
  afiles=$(find "$analyse" -type f | wc -l)
  bench_drop
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$bin" compare --analyse "$analyse" > "$work/analyse.txt" 2>"$work/analyse.err" || { cat "$work/analyse.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  t=$(echo "$t1 - $t0" | bc -l)
  printf '\nstorefs compare --analyse %s: %d files in %.2f s (%.0f files/s), peak RSS %.0f MiB (%s)\n' \
    "$analyse" "$afiles" "$t" "$(echo "$afiles / $t" | bc -l)" "$(echo "$(cat "$work/rss") / 1024" | bc -l)" "$bench_cache"
  cat "$work/analyse.txt"
fi
