#!/usr/bin/env bash
# bench/mount.sh [TREE...] — reading through `storefs mount` (files opened without a request, the
# default; and `storefs-open`: --open-files, with passthrough as root) against the native trees,
# bindfs of them, squashfuse of a squashfs image of them and (as root, where loop devices work) the
# kernel's squashfs of the same image, measured in one run:
#   (a) interpreter start-up: `python3 -c 'import json, email, asyncio'`, 20 runs per tree that
#       has bin/python3 (LD_LIBRARY_PATH=<tree>/lib PYTHONHOME=<tree>); once as is and once with
#       PYTHONPYCACHEPREFIX (bytecode cached outside the tree: the store's mtime 1 makes CPython's
#       timestamp-checked __pycache__ files stale, so (a) recompiles the imported modules);
#   (b) a metadata walk: find DIR... -printf '%p %s %m %T@\n';
#   (c) reading every file of every tree (find -type f | xargs cat);
#   (d) a sequential read of one 1 GiB file (an item of its own; its own squashfs image);
#   (e) the RSS of the storefs mount process after the full walk (and of bindfs / squashfuse).
# Warm cache (after a warm-up pass); cold cache too where /proc/sys/vm/drop_caches is writable.
# TREE defaults to three pyenv CPythons (/root/.pyenv/versions/{3.10.13,3.11.7,3.12.1}, or
# whichever exist under $PYENV_ROOT/versions). Installs bindfs, squashfuse and squashfs-tools when
# missing (as root). Work happens in $BENCH_TMP (default /var/tmp): about 3 GiB plus 2x the trees.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUNS=${RUNS:-20}   # start-up runs per tree
REPS=${REPS:-3}    # repetitions of (b), (c), (d); the median is reported

# ---- the trees -----------------------------------------------------------------------------------
trees=()
if [ $# -gt 0 ]; then
  for d in "$@"; do [ -d "$d" ] || { echo "mount.sh: $d is not a directory" >&2; exit 2; }; trees+=("$(cd "$d" && pwd)"); done
else
  pyroot=${PYENV_ROOT:-/root/.pyenv}/versions
  [ -d "$pyroot" ] || pyroot=/root/.pyenv/versions
  for v in 3.10.13 3.11.7 3.12.1; do [ -x "$pyroot/$v/bin/python3" ] && trees+=("$pyroot/$v"); done
  if [ ${#trees[@]} -eq 0 ]; then
    for d in "$pyroot"/3.*/; do [ -x "$d/bin/python3" ] && trees+=("${d%/}"); [ ${#trees[@]} -ge 3 ] && break; done
  fi
  [ ${#trees[@]} -gt 0 ] || { echo "mount.sh: no CPython under $pyroot; give TREE arguments" >&2; exit 2; }
fi
names=()
for t in "${trees[@]}"; do names+=("$(basename "$t")"); done
if [ "$(printf '%s\n' "${names[@]}" | sort | uniq -d)" != "" ]; then
  echo "mount.sh: the trees' base names must be distinct (they name the squashfs dirs): ${names[*]}" >&2; exit 2
fi

# ---- tools -------------------------------------------------------------------------------------
need=()
command -v bindfs >/dev/null || need+=(bindfs)
command -v squashfuse >/dev/null || need+=(squashfuse)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "mount.sh: ${need[*]} missing, and only root installs them" >&2; exit 1; }
  echo "mount.sh: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi

# ---- work dir, cleanup ---------------------------------------------------------------------------
work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/storefs-mount-bench.XXXXXX")
mounts=() pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
  for m in "${mounts[@]}"; do
    if grep -qF " $m " /proc/self/mountinfo; then
      umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || fusermount3 -u -z "$m"
    fi
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  for m in "${mounts[@]}"; do grep -qF " $m " /proc/self/mountinfo && echo "mount.sh: $m is still mounted" >&2; done
  chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin=$work/storefs
(cd "$here/.." && go build -o "$bin" ./cmd/storefs)

# waitmount MP PID: waits (10 s) until MP is a mount point, failing if PID dies first.
waitmount() {
  for _ in $(seq 200); do
    grep -qF " $1 " /proc/self/mountinfo && return 0
    kill -0 "$2" 2>/dev/null || { echo "mount.sh: the server of $1 exited" >&2; return 1; }
    sleep 0.05
  done
  echo "mount.sh: $1 not mounted after 10 s" >&2; return 1
}

# ---- data: the 1 GiB file ----------------------------------------------------------------------
mkdir -p "$work/big"
bigfile=$work/big/bigfile
if command -v openssl >/dev/null; then
  # (openssl dies of SIGPIPE once head has its 1 GiB: not a failure)
  { openssl enc -aes-128-ctr -nosalt -pass pass:storefs-bench -in /dev/zero 2>/dev/null || true; } | head -c 1073741824 > "$bigfile"
else
  head -c 1073741824 /dev/urandom > "$bigfile" || true
fi

files=$(find "${trees[@]}" -type f | wc -l)
bytes=$(find "${trees[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
printf 'trees: %s\n' "${trees[*]}"
printf '       %d files, %.2f GiB; plus a 1 GiB file. %s, %d CPUs, kernel %s\n' "$files" \
  "$(echo "$bytes/1073741824" | bc -l)" "$(uname -m)" "$(nproc)" "$(uname -r)"

# ---- storefs -------------------------------------------------------------------------------------
state=$work/state
"$bin" --state "$state" init --mode blob >/dev/null
items=()
t0=$EPOCHREALTIME
for i in "${!trees[@]}"; do
  name=$(printf '%s' "${names[$i]}" | tr -c 'A-Za-z0-9+._?=-' '_')
  items+=("$(basename "$("$bin" --state "$state" --no-progress add --name "$name" "${trees[$i]}")")")
done
bigitem=$(basename "$("$bin" --state "$state" --no-progress add --name bigfile "$bigfile")")
t_add=$(echo "$EPOCHREALTIME - $t0" | bc -l)
sfmp=$work/mnt/storefs
mkdir -p "$sfmp"
"$bin" --state "$state" --no-progress mount "$sfmp" 2> "$work/storefs-mount.log" &
sfpid=$!; pids+=("$sfpid"); mounts+=("$sfmp")
waitmount "$sfmp" "$sfpid"
for _ in $(seq 100); do grep -q 'mounted at' "$work/storefs-mount.log" && break; sleep 0.05; done
# the same items in a second store (a store has one mount), mounted with --open-files: every open a
# request to storefs, and passthrough reads as root on Linux 6.9+
state2=$work/state-open
"$bin" --state "$state2" init --mode blob >/dev/null
for i in "${!trees[@]}"; do
  name=$(printf '%s' "${names[$i]}" | tr -c 'A-Za-z0-9+._?=-' '_')
  "$bin" --state "$state2" --no-progress add --name "$name" "${trees[$i]}" >/dev/null
done
"$bin" --state "$state2" --no-progress add --name bigfile "$bigfile" >/dev/null
sfmp2=$work/mnt/storefs-open
mkdir -p "$sfmp2"
"$bin" --state "$state2" --no-progress mount --open-files "$sfmp2" 2> "$work/storefs-open-mount.log" &
pids+=("$!"); mounts+=("$sfmp2")
waitmount "$sfmp2" "$!"
for _ in $(seq 100); do grep -q 'mounted at' "$work/storefs-open-mount.log" && break; sleep 0.05; done

# ---- bindfs: each native tree, read-only -------------------------------------------------------
bind_dirs=()
for i in "${!trees[@]}"; do
  m=$work/mnt/bindfs-$i; mkdir -p "$m"
  bindfs -f -r "${trees[$i]}" "$m" 2> "$work/bindfs-$i.log" &
  pids+=("$!"); mounts+=("$m"); waitmount "$m" "$!"
  bind_dirs+=("$m")
done
mkdir -p "$work/mnt/bindfs-big"
bindfs -f -r "$work/big" "$work/mnt/bindfs-big" 2> "$work/bindfs-big.log" &
pids+=("$!"); mounts+=("$work/mnt/bindfs-big"); waitmount "$work/mnt/bindfs-big" "$!"

# ---- squashfuse: one image of the trees, one of the big file (mksquashfs defaults: gzip) ---------
t0=$EPOCHREALTIME
mksquashfs "${trees[@]}" "$work/trees.sqfs" -keep-as-directory -no-progress -quiet >/dev/null
mksquashfs "$bigfile" "$work/big.sqfs" -noD -noF -no-progress -quiet >/dev/null  # random data: compression would only cost time
t_sq=$(echo "$EPOCHREALTIME - $t0" | bc -l)
for img in trees big; do
  m=$work/mnt/squashfuse-$img; mkdir -p "$m"
  squashfuse -f "$work/$img.sqfs" "$m" 2> "$work/squashfuse-$img.log" &
  pids+=("$!"); mounts+=("$m"); waitmount "$m" "$!"
done
sq_dirs=()
for n in "${names[@]}"; do sq_dirs+=("$work/mnt/squashfuse-trees/$n"); done
# kernel squashfs of the same images, where this kernel and its loop devices allow
ksq=no
if [ "$(id -u)" = 0 ]; then
  ksq=yes
  for img in trees big; do
    m=$work/mnt/squashfs-$img; mkdir -p "$m"
    if mount -t squashfs -o loop,ro "$work/$img.sqfs" "$m" 2> "$work/squashfs-$img.log"; then mounts+=("$m"); else ksq=no; fi
  done
fi
ksq_dirs=()
for n in "${names[@]}"; do ksq_dirs+=("$work/mnt/squashfs-trees/$n"); done
printf 'storefs add of the trees and the big file: %.1f s; mksquashfs of both images: %.1f s (%s + %s)\n' "$t_add" "$t_sq" \
  "$(du -h "$work/trees.sqfs" | cut -f1)" "$(du -h "$work/big.sqfs" | cut -f1)"
printf 'storefs: %s\n' "$(sed -n 's/^storefs mount: //p' "$work/storefs-mount.log" | head -1)"
printf 'storefs-open (--open-files): %s\n' "$(sed -n 's/^storefs mount: //p' "$work/storefs-open-mount.log" | head -1)"

# ---- the systems ---------------------------------------------------------------------------------
systems=(native storefs storefs-open bindfs squashfuse)
[ "$ksq" = yes ] && systems+=(squashfs)
declare -A dirs big
sf_dirs=(); for it in "${items[@]}"; do sf_dirs+=("$sfmp/$it"); done
dirs[native]="${trees[*]}";  big[native]=$bigfile
dirs[storefs]="${sf_dirs[*]}"; big[storefs]=$sfmp/$bigitem
sf_dirs2=(); for it in "${items[@]}"; do sf_dirs2+=("$sfmp2/$it"); done
dirs[storefs-open]="${sf_dirs2[*]}"; big[storefs-open]=$sfmp2/$bigitem
dirs[bindfs]="${bind_dirs[*]}"; big[bindfs]=$work/mnt/bindfs-big/bigfile
dirs[squashfuse]="${sq_dirs[*]}"; big[squashfuse]=$work/mnt/squashfuse-big/bigfile
dirs[squashfs]="${ksq_dirs[*]}"; big[squashfs]=$work/mnt/squashfs-big/bigfile
# (no file names with blanks in $work, so the word splitting of ${dirs[...]} below is safe)
for s in "${systems[@]}"; do
  for d in ${dirs[$s]}; do [ -d "$d" ] || { echo "mount.sh: $s: $d missing" >&2; exit 1; }; done
  [ -f "${big[$s]}" ] || { echo "mount.sh: $s: ${big[$s]} missing" >&2; exit 1; }
done

can_drop=no
if (sync; echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then can_drop=yes; fi
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# secs CACHE CMD...: elapsed seconds of CMD (output discarded); cold drops caches first.
secs() {
  local cache=$1; shift
  [ "$cache" = cold ] && drop
  local t0=$EPOCHREALTIME
  "$@" > /dev/null 2>&1
  echo "$EPOCHREALTIME - $t0" | bc -l
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
total() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.6f\n", s}'; }

pyenv=(env -u PYTHONPATH -u PYTHONSTARTUP -u PYTHONDONTWRITEBYTECODE -u PYTHONPYCACHEPREFIX PYTHONNOUSERSITE=1)
startup_one() { # ROOT
  "${pyenv[@]}" LD_LIBRARY_PATH="$1/lib" PYTHONHOME="$1" PYTHONDONTWRITEBYTECODE=1 \
    "$1/bin/python3" -c 'import json, email, asyncio'
}
startup_cached() { # ROOT SYSTEM: bytecode in a cache dir of the system's own, outside the tree
  "${pyenv[@]}" LD_LIBRARY_PATH="$1/lib" PYTHONHOME="$1" PYTHONPYCACHEPREFIX="$work/pycache/$2" \
    "$1/bin/python3" -c 'import json, email, asyncio'
}
walk() { find "$@" -printf '%p %s %m %T@\n' > /dev/null; }
readall() { find "$@" -type f -print0 | xargs -0 -r cat > /dev/null; }
seqread() { dd if="$1" of=/dev/null bs=1M status=none; }

declare -A R   # R[cache,test,system] = seconds
pyroots() { # SYSTEM: the roots with bin/python3
  for d in ${dirs[$1]}; do [ -x "$d/bin/python3" ] && echo "$d"; done
}

run_all() { # CACHE
  local cache=$1 s d ts
  for s in "${systems[@]}"; do
    # (a) start-up
    ts=()
    for d in $(pyroots "$s"); do
      for _ in $(seq "$RUNS"); do ts+=("$(secs "$cache" startup_one "$d")"); done
    done
    if [ ${#ts[@]} -gt 0 ]; then
      R[$cache,startup,$s]=$(total "${ts[@]}"); R[$cache,startup-median,$s]=$(median "${ts[@]}")
    fi
    ts=()
    for d in $(pyroots "$s"); do
      for _ in $(seq "$RUNS"); do ts+=("$(secs "$cache" startup_cached "$d" "$s")"); done
    done
    if [ ${#ts[@]} -gt 0 ]; then
      R[$cache,startup-pyc,$s]=$(total "${ts[@]}"); R[$cache,startup-pyc-median,$s]=$(median "${ts[@]}")
    fi
    # (b) metadata walk, (c) read all, (d) sequential read
    ts=(); for _ in $(seq "$REPS"); do ts+=("$(secs "$cache" walk ${dirs[$s]})"); done
    R[$cache,walk,$s]=$(median "${ts[@]}")
    [ "$s" = storefs ] && rss_walk=$(awk '/^VmRSS/ {print $2}' "/proc/$sfpid/status")
    ts=(); for _ in $(seq "$REPS"); do ts+=("$(secs "$cache" readall ${dirs[$s]})"); done
    R[$cache,readall,$s]=$(median "${ts[@]}")
    ts=(); for _ in $(seq "$REPS"); do ts+=("$(secs "$cache" seqread "${big[$s]}")"); done
    R[$cache,seqread,$s]=$(median "${ts[@]}")
  done
}

caches=(warm)
# the warm-up pass: everything once, every system
for s in "${systems[@]}"; do
  for d in $(pyroots "$s"); do startup_one "$d" >/dev/null; startup_cached "$d" "$s" >/dev/null; done
  walk ${dirs[$s]}; readall ${dirs[$s]}; seqread "${big[$s]}"
done
rss_walk=
run_all warm
if [ "$can_drop" = yes ]; then caches+=(cold); run_all cold; fi
rss_end=$(awk '/^VmRSS/ {print $2}' "/proc/$sfpid/status")
hwm_end=$(awk '/^VmHWM/ {print $2}' "/proc/$sfpid/status")

# ---- the table -----------------------------------------------------------------------------------
npy=$(pyroots native | wc -l)
label() {
  case $1 in
    startup) echo "(a) python start-up, $((npy * RUNS)) runs";;
    startup-median|startup-pyc-median) echo "    median of one run";;
    startup-pyc) echo "(a2) the same, PYTHONPYCACHEPREFIX";;
    walk) echo "(b) metadata walk (find)";;
    readall) echo "(c) read every file";;
    seqread) echo "(d) sequential read, 1 GiB";;
  esac
}
cell() { # CACHE TEST SYSTEM
  local v=${R[$1,$2,$3]:-} n=${R[$1,$2,native]:-}
  if [ -z "$v" ]; then printf '%20s' "n/a"; return; fi
  if [ "$3" = native ] || [ -z "$n" ]; then printf '%20s' "$(printf '%.3f' "$v")"; return; fi
  printf '%20s' "$(printf '%.3f (%.2fx)' "$v" "$(echo "$v / $n" | bc -l)")"
}
for cache in "${caches[@]}"; do
  printf '\n%s cache: seconds (ratio to native; median of %d for b-d)\n' "$cache" "$REPS"
  printf '%-36s' ""; for s in "${systems[@]}"; do printf '%20s' "$s"; done; echo
  for test in startup startup-median startup-pyc startup-pyc-median walk readall seqread; do
    [ -n "${R[$cache,$test,native]:-}" ] || continue
    printf '%-36s' "$(label "$test")"
    for s in "${systems[@]}"; do cell "$cache" "$test" "$s"; done; echo
  done
done
[ "$can_drop" = yes ] || echo "(cold cache not measured: /proc/sys/vm/drop_caches is not writable here)"
echo "(a) on storefs recompiles: every mtime there is 1, so the trees' timestamp-checked .pyc files are stale"
echo "    (python3 -v: 'bytecode is stale'); (a2) caches bytecode outside the tree, for every system alike."

rss_of() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null; }
printf '\n(e) storefs mount RSS: %s KiB after the full walk, %s KiB at the end (peak %s KiB)\n' "${rss_walk:-?}" "$rss_end" "$hwm_end"
printf '    for comparison: bindfs'
for i in "${!trees[@]}"; do printf ' %s' "$(rss_of "${pids[$((2 + i))]}")"; done
printf ' KiB (one per tree), squashfuse %s KiB (trees image)\n' "$(rss_of "${pids[$((3 + ${#trees[@]}))]}")"
