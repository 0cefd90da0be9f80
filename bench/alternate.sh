#!/usr/bin/env bash
# alternate.sh: compares metro binaries on one workload, side by side.
#
#   bash bench/alternate.sh [options] BINARY BINARY [BINARY...]
#
# It starts one stretched pair (`metro lab up --arrays 2`) per binary, all
# at once, then runs the same qemu-img bench workload through each lab in
# turn, round after round, reversing the order every other round (a run
# may leave background work — a flush, a compaction — that slows the next
# one, so no binary always goes second). Only one lab has I/O at a time.
# It prints milliseconds per write for every run, then, per binary, the
# mean, the median and its ratio to the first binary's per-round times
# (median of the per-round ratios, and in how many rounds it was faster).
# Compared with run.sh, which runs each binary's whole table in turn, the
# binaries here share the machine's state of the moment, so drifts of
# load and of the disk cancel out; it answers "is B slower than A on this
# workload" with many short paired runs.
#
# Options:
#   --array a|b     the array the initiator writes through: a, the pod's
#                   sequencer (default), or b, the follower
#   --depth N       queue depth (default 32)
#   --count N       writes per run (default 30000)
#   --rounds N      rounds (default 14)
#   --size SIZE     volume size (default 2G)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BENCH_DIR/lib.sh"

INITIATOR=iqn.2026-11.io.metro:bench
ARRAY=a DEPTH=32 COUNT=30000 ROUNDS=14 SIZE=2G
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
	case $1 in
	--array) ARRAY=${2:-}; shift 2 ;;
	--depth) DEPTH=${2:-}; shift 2 ;;
	--count) COUNT=${2:-}; shift 2 ;;
	--rounds) ROUNDS=${2:-}; shift 2 ;;
	--size) SIZE=${2:-}; shift 2 ;;
	-h | --help) usage ;;
	--*) die "unknown option $1 (see --help)" ;;
	*) break ;;
	esac
done
case $ARRAY in a) IDX=0 ;; b) IDX=1 ;; *) die "--array $ARRAY: want a or b" ;; esac
for n in "$DEPTH" "$COUNT" "$ROUNDS"; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || die "--depth, --count and --rounds want a positive number, not '$n'"
done
SIZE_BYTES=$(size_bytes "$SIZE") || die "--size $SIZE: want a size like 2G"
[ $# -ge 2 ] || die "give two or more metro binaries to compare (see --help)"
BINS=("$@")
for b in "${BINS[@]}"; do
	[ -x "$b" ] || die "$b is not an executable metro binary"
done
command -v qemu-img >/dev/null || die "qemu-img is missing: run scripts/deps.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/metro-alternate.XXXXXX")
cleanup() {
	lab_stop_all
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -a IMG
for i in "${!BINS[@]}"; do
	lab_launch "l$i" "${BINS[$i]}" "$WORK/lab$i" "$SIZE" "$INITIATOR" "$WORK/lab$i.log" --arrays 2
done
for i in "${!BINS[@]}"; do
	lab_wait "l$i" "$INITIATOR" 180
	portal=$(lab_field "l$i" PORTALS "$IDX") && iqn=$(lab_field "l$i" IQNS "$IDX") ||
		die "lab $i lists no array-$ARRAY"
	IMG[i]="driver=iscsi,transport=tcp,portal=$portal,target=$iqn,lun=${LAB_LUN[l$i]},initiator-name=$INITIATOR"
	log "lab $i (${BINS[$i]}): writing through $portal"
done

# run I OFFSET: one qemu-img bench run through lab I; prints ms per write.
run() {
	local out s
	out=$(qemu-img bench --image-opts "${IMG[$1]}" -w -s 4096 -d "$DEPTH" -c "$COUNT" \
		-o "$2" -S 8192 --pattern 0xa5 2>&1) || die "qemu-img bench through lab $1 failed: $out"
	s=$(sed -n 's/Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out")
	[ -n "$s" ] || die "qemu-img bench printed no time: $out"
	awk -v s="$s" -v c="$COUNT" 'BEGIN { printf "%.4f", s * 1000 / c }'
}

span=$((COUNT * 8192))
[ "$span" -le "$SIZE_BYTES" ] || die "--count $COUNT writes 8 KiB apart do not fit in --size $SIZE"
for i in "${!BINS[@]}"; do
	run "$i" 0 >/dev/null # warm-up: logins, first allocations
done
RESULTS=$WORK/results
for ((r = 1; r <= ROUNDS; r++)); do
	off=$(((r * span) % (SIZE_BYTES - span + 1) / 4096 * 4096))
	order=("${!BINS[@]}")
	if ((r % 2 == 0)); then
		order=()
		for ((i = ${#BINS[@]} - 1; i >= 0; i--)); do order+=("$i"); done
	fi
	line="round $r:"
	for i in "${order[@]}"; do
		ms=$(run "$i" "$off")
		echo "$r $i $ms" >>"$RESULTS"
		line="$line [$i] $ms"
	done
	echo "$line ms/write"
done

python3 - "$RESULTS" "${BINS[@]}" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
bins = sys.argv[2:]
t = {}
for r, i, ms in rows:
    t.setdefault(int(i), {})[int(r)] = float(ms)
base = t[0]
print("%-3s %-40s %10s %10s %14s %8s" % ("", "binary", "mean ms", "median ms", "ratio to [0]", "faster"))
for i, b in enumerate(bins):
    v = t[i]
    ratios = [v[r] / base[r] for r in base if r in v]
    faster = sum(1 for r in base if v[r] < base[r])
    print("[%d] %-40s %10.4f %10.4f %14.3f %5d/%d" % (i, b[-40:], st.mean(v.values()), st.median(v.values()),
          st.median(ratios), faster, len(ratios)))
PY
