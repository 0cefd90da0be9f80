#!/usr/bin/env bash
# run.sh: the side-by-side benchmark of metro against tgtd (issue 2 item 7),
# with the stretched pair.
#
# In one invocation it starts two tgtd references on loopback — a file LUN
# opened with --bsoflags sync (every write durable, metro's promise) and a
# plain buffered one — a one-array `metro lab up --arrays 1`, and a
# stretched pair `metro lab up --arrays 2` (array-a the pod's sequencer,
# array-b the follower, their link through the lab's delay proxy). It runs
# the same qemu-img bench workloads against every target (alternating
# targets, several repeats, medians), plus iscsi-perf reads: the pair
# through array-a and through array-b, with the link at 0 and at 1 ms round
# trip (set through the proxy's control API before each run). For metro's
# targets it also measures the arrays' CPU time per run. It prints one
# table with the ratios to tgtd and to the one-array metro, and checks the
# targets. Raw numbers and logs go to a results directory whose path it
# prints. Everything it starts is stopped on exit.
#
# Targets: tgtd-sync tgtd-buffered metro pair-a pair-b pair-a-1ms pair-b-1ms
#
# Knobs (environment):
#   BENCH_QUICK=1          smoke test: 1 repeat, a tenth of the counts, 2 s iscsi-perf
#   BENCH_REPEATS=N        repeats of each workload per target (default 7, quick 1)
#   BENCH_PERF_SECONDS=N   iscsi-perf run time (default 5, quick 2)
#   BENCH_PERF_REPEATS=N   iscsi-perf repeats per target (default 3, quick 1)
#   BENCH_SIZE=2G          volume / backing file size (binary units)
#   BENCH_METRO=0          skip metro and the pair (tgtd references only)
#   BENCH_PAIR=0           skip the stretched pair (the old three targets)
#   BENCH_TARGETS="..."    subset/order of the targets above
#   METRO_BIN=path         use this metro binary instead of building bin/metro
#   BENCH_TMP=dir          where the temp dirs go (default $TMPDIR or /tmp)
#   BENCH_KEEP=1           keep the work dir (backing files, lab data)
#   BENCH_RUN_TIMEOUT=N    seconds before one qemu-img/iscsi-perf run is killed (180)
#   BENCH_DEADLINE=N       seconds after which remaining runs are skipped (2400)
#   BENCH_LAB_TIMEOUT=N    seconds to wait for lab.json (180)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BENCH_DIR/lib.sh"

INITIATOR=iqn.2026-11.io.metro:bench
PATTERN=0xa5 # written byte: not zero, so no target can skip zero blocks

QUICK=${BENCH_QUICK:-0}
[ "$QUICK" = 0 ] || QUICK=1
if [ "$QUICK" = 1 ]; then
	REPEATS=${BENCH_REPEATS:-1}
	PERF_SECONDS=${BENCH_PERF_SECONDS:-2}
	PERF_REPEATS=${BENCH_PERF_REPEATS:-1}
	C_D32=2000 C_D1=200 C_SEQ=400
else
	REPEATS=${BENCH_REPEATS:-7}
	PERF_SECONDS=${BENCH_PERF_SECONDS:-5}
	PERF_REPEATS=${BENCH_PERF_REPEATS:-3}
	C_D32=20000 C_D1=2000 C_SEQ=4000
fi
SIZE=${BENCH_SIZE:-2G}
SIZE_BYTES=$(size_bytes "$SIZE") || die "BENCH_SIZE=$SIZE: want a size like 2G"
RUN_TIMEOUT=${BENCH_RUN_TIMEOUT:-180}
DEADLINE=${BENCH_DEADLINE:-2400}
LAB_TIMEOUT=${BENCH_LAB_TIMEOUT:-180}
ALL_TARGETS=(tgtd-sync tgtd-buffered metro pair-a pair-b pair-a-1ms pair-b-1ms)
if [ -n "${BENCH_TARGETS:-}" ]; then
	read -r -a TARGETS <<<"$BENCH_TARGETS"
elif [ "${BENCH_METRO:-1}" = 0 ]; then
	TARGETS=(tgtd-sync tgtd-buffered)
elif [ "${BENCH_PAIR:-1}" = 0 ]; then
	TARGETS=(tgtd-sync tgtd-buffered metro)
else
	TARGETS=("${ALL_TARGETS[@]}")
fi
[ "${#TARGETS[@]}" -gt 0 ] || die "BENCH_TARGETS names no target"

# Per metro target: which lab serves it (one: the one-array lab, pair: the
# stretched pair), through which of the lab's arrays (0 = array-a, the
# sequencer; 1 = array-b), and the link round trip set on the pair's proxy
# before each of its runs (a Go duration).
declare -A TARGET_LAB=() TARGET_ARRAY=() TARGET_RTT=()
declare -A SEEN=()
for t in "${TARGETS[@]}"; do
	[ -z "${SEEN[$t]:-}" ] || die "target $t twice in BENCH_TARGETS"
	SEEN[$t]=1
	case $t in
	tgtd-sync | tgtd-buffered) ;;
	metro) TARGET_LAB[$t]=one TARGET_ARRAY[$t]=0 ;;
	pair-a) TARGET_LAB[$t]=pair TARGET_ARRAY[$t]=0 TARGET_RTT[$t]=0s ;;
	pair-b) TARGET_LAB[$t]=pair TARGET_ARRAY[$t]=1 TARGET_RTT[$t]=0s ;;
	pair-a-1ms) TARGET_LAB[$t]=pair TARGET_ARRAY[$t]=0 TARGET_RTT[$t]=1ms ;;
	pair-b-1ms) TARGET_LAB[$t]=pair TARGET_ARRAY[$t]=1 TARGET_RTT[$t]=1ms ;;
	*) die "unknown target $t in BENCH_TARGETS (known: ${ALL_TARGETS[*]})" ;;
	esac
done
# want_lab LAB: true if a selected target runs on LAB.
want_lab() {
	local t
	for t in "${TARGETS[@]}"; do [ "${TARGET_LAB[$t]:-}" = "$1" ] && return 0; done
	return 1
}
want() {
	local t
	for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done
	return 1
}

# Workloads: id, qemu-img bench arguments (same for every target).
WORKLOADS=(w4k-d32 w4k-d1 r4k-d32 w64k-seq)
declare -A WL_ARGS=(
	[w4k-d32]="-w -s 4096 -d 32 -c $C_D32 -S 8192"
	[w4k-d1]="-w -s 4096 -d 1 -c $C_D1 -S 8192"
	[r4k-d32]="-s 4096 -d 32 -c $C_D32 -S 8192"
	[w64k-seq]="-w -s 65536 -d 32 -c $C_SEQ"
)
# The prefill covers every byte any workload touches, so the reads read
# written data and every write overwrites (the same state on all targets).
PREFILL_BYTES=$((C_D32 * 8192 > C_SEQ * 65536 ? C_D32 * 8192 : C_SEQ * 65536))
PREFILL_COUNT=$(((PREFILL_BYTES + 65535) / 65536))
[ $((PREFILL_COUNT * 65536)) -le "$SIZE_BYTES" ] || die "BENCH_SIZE=$SIZE is smaller than the ${PREFILL_BYTES}-byte range the workloads use"

# ---- preflight ---------------------------------------------------------------

for c in tgtd tgtadm qemu-img iscsi-perf python3 fallocate timeout; do
	command -v "$c" >/dev/null || die "$c not found: run scripts/deps.sh (make deps) — it installs tgt, qemu-utils, qemu-block-extra, libiscsi-bin"
done

TMPBASE=${BENCH_TMP:-${TMPDIR:-/tmp}}
WORK=$(mktemp -d "$TMPBASE/metro-bench-work.XXXXXX")
RES=$(mktemp -d "$TMPBASE/metro-bench-results.XXXXXX")
mkdir -p "$RES/logs"
RAW=$RES/raw.tsv
START=$SECONDS

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	[ -n "${CUR_PID:-}" ] && stop_pid "$CUR_PID" 2 TERM
	lab_stop_all
	for t in "${!TGTD_PID[@]}"; do tgtd_stop "$t"; done
	# The arrays' logs and lab.json live in the work dir: keep copies.
	for t in "${!LAB_DIR[@]}"; do
		for f in "${LAB_DIR[$t]}"/lab.json "${LAB_DIR[$t]}"/*/array.log; do
			[ -f "$f" ] || continue
			case $f in
			*/lab.json) cp "$f" "$RES/logs/metro-lab-$t.lab.json" ;;
			*) cp "$f" "$RES/logs/metro-lab-$t.$(basename "$(dirname "$f")").log" ;;
			esac
		done
	done
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		log "kept work dir $WORK"
	else
		rm -rf "$WORK"
	fi
	log "results and logs: $RES"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# The source the labs run (the tree may change during a long run).
METRO_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)') at the start${METRO_BIN:+; binary $METRO_BIN}"
log "work dir $WORK, results $RES"
log "targets: ${TARGETS[*]}; repeats $REPEATS; volume $SIZE; quick=$QUICK"

# ---- targets -----------------------------------------------------------------

declare -A PORTAL=() IQN=() LUN=()
for t in tgtd-sync tgtd-buffered; do
	want "$t" || continue
	f=$WORK/$t.img
	fallocate -l "$SIZE_BYTES" "$f" || die "fallocate $f failed"
	oflags=
	[ "$t" = tgtd-sync ] && oflags=sync
	tgtd_start "$t" "$f" "$oflags" "$RES/logs/$t.tgtd.log"
	PORTAL[$t]=${TGTD_PORTAL[$t]} IQN[$t]=${TGTD_IQN[$t]} LUN[$t]=${TGTD_LUN[$t]}
	log "$t: tgtd pid ${TGTD_PID[$t]} portal ${PORTAL[$t]} ${IQN[$t]} lun ${LUN[$t]}${oflags:+ (bsoflags $oflags)}"
done

if want_lab one || want_lab pair; then
	bin=${METRO_BIN:-}
	if [ -z "$bin" ]; then
		command -v go >/dev/null || die "go not found (needed to build bin/metro; or set METRO_BIN)"
		log "building bin/metro"
		(cd "$REPO" && go build -o bin/metro ./cmd/metro) >"$RES/logs/build.log" 2>&1 ||
			{
				cat "$RES/logs/build.log" >&2
				die "go build ./cmd/metro failed"
			}
		bin=$REPO/bin/metro
	fi
	# Both labs stay up for the whole run (an idle lab costs next to
	# nothing). They start one after the other: a lab picks free loopback
	# ports and binds them a little later, so two labs starting at once can
	# take each other's; the pair is ready once pod1 is in sync.
	log "starting metro lab up (waiting up to ${LAB_TIMEOUT}s for each lab.json)"
	if want_lab pair; then
		lab_start pair "$bin" "$WORK/lab-pair" "$SIZE" "$INITIATOR" "$RES/logs/metro-lab-pair.log" "$LAB_TIMEOUT" --arrays 2
		[ "${LAB_ARRAY_NAMES[pair]}" = "array-a array-b" ] ||
			die "the pair lab's lab.json lists arrays '${LAB_ARRAY_NAMES[pair]}', want 'array-a array-b'"
		[ -n "${LAB_PROXY[pair]}" ] || die "the pair lab's lab.json has no link_proxy"
		rtt=$(link_get "${LAB_PROXY[pair]}") || die "the pair's link proxy ${LAB_PROXY[pair]} does not answer"
		log "pair lab: lab pid ${LAB_PID[pair]}, ${LAB_ARRAY_NAMES[pair]} pids ${LAB_ARRAY_PIDS[pair]}, link proxy ${LAB_PROXY[pair]} (rtt $rtt)"
		PAIR_START=$(lab_pod_state "${LAB_DIR[pair]}") || die "the pair's arrays do not answer about pod1"
		log "pair at the start: ${PAIR_START//$'\n'/; }"
		grep -q '^array-a sequencer=array-a ' <<<"$PAIR_START" ||
			log "WARNING: array-a is not pod1's sequencer: pair-a and pair-b are swapped in meaning"
	fi
	if want_lab one; then
		lab_start one "$bin" "$WORK/lab-one" "$SIZE" "$INITIATOR" "$RES/logs/metro-lab-one.log" "$LAB_TIMEOUT" --arrays 1
		log "one-array lab: lab pid ${LAB_PID[one]}, ${LAB_ARRAY_NAMES[one]} pid ${LAB_ARRAY_PIDS[one]}"
	fi
	# The arrays' background CPU (nothing connected): what a slow run's CPU
	# per request also holds, idle rate x run time.
	declare -A IDLE_C0=() IDLE_MS=()
	for lab in one pair; do
		want_lab "$lab" || continue
		read -r -a pids <<<"${LAB_ARRAY_PIDS[$lab]}"
		IDLE_C0[$lab]=$(cpu_ticks "${pids[@]}") || IDLE_C0[$lab]=''
	done
	sleep 2
	for lab in "${!IDLE_C0[@]}"; do
		read -r -a pids <<<"${LAB_ARRAY_PIDS[$lab]}"
		if [ -n "${IDLE_C0[$lab]}" ] && c1=$(cpu_ticks "${pids[@]}"); then
			IDLE_MS[$lab]=$(awk -v t=$((c1 - IDLE_C0[$lab])) -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t / hz * 1000 / 2 }')
			log "$lab lab idle: its arrays use ${IDLE_MS[$lab]} ms of CPU per second"
		fi
	done
fi

# CPU_PIDS[TARGET]: the processes whose CPU time is charged to TARGET's
# runs: every array of its lab (for the pair both: the one the initiator
# talks to and its peer). LINK_PID[TARGET]: `metro lab up`, which runs the
# link proxy (pair targets only).
declare -A CPU_PIDS=() LINK_PID=()
for t in "${TARGETS[@]}"; do
	lab=${TARGET_LAB[$t]:-}
	[ -n "$lab" ] || continue
	i=${TARGET_ARRAY[$t]}
	PORTAL[$t]=$(lab_field "$lab" PORTALS "$i") || die "lab $lab has no array $i for $t"
	IQN[$t]=$(lab_field "$lab" IQNS "$i")
	LUN[$t]=${LAB_LUN[$lab]}
	CPU_PIDS[$t]=${LAB_ARRAY_PIDS[$lab]}
	if [ "$lab" = pair ]; then LINK_PID[$t]=${LAB_PID[$lab]}; fi
	log "$t: $(lab_field "$lab" ARRAY_NAMES "$i") portal ${PORTAL[$t]} ${IQN[$t]} lun ${LUN[$t]}${TARGET_RTT[$t]:+, link rtt ${TARGET_RTT[$t]}}; CPU of pids ${CPU_PIDS[$t]}"
done

# set_link TARGET: for a pair target, sets the link's round trip to the
# target's (before every run, so nothing else can leave it changed) and
# checks what the proxy reports. Sets RUN_RTT to the rtt in force; fails
# if it cannot be set.
set_link() {
	local t=$1 want got
	want=${TARGET_RTT[$t]:-}
	[ -n "$want" ] || return 0
	got=$(link_set_rtt "${LAB_PROXY[${TARGET_LAB[$t]}]}" "$want" 2>&1) || {
		log "setting the link rtt to $want failed: $got"
		return 1
	}
	if [ "$got" != "$want" ]; then
		log "the link proxy reports rtt $got after setting $want"
		return 1
	fi
	RUN_RTT=$want
}

# image_opts TARGET: qemu's --image-opts for TARGET through libiscsi.
image_opts() {
	printf 'driver=iscsi,transport=tcp,portal=%s,target=%s,lun=%s,initiator-name=%s' \
		"${PORTAL[$1]}" "${IQN[$1]}" "${LUN[$1]}" "$INITIATOR"
}

# Every target must answer and have the same size before anything is timed.
for t in "${TARGETS[@]}"; do
	out=$(timeout -k 5 60 qemu-img info --image-opts "$(image_opts "$t")" 2>&1) ||
		die "$t: qemu-img info failed (login, LUN masking or the iscsi block driver?):"$'\n'"$out"
	got=$(sed -n 's/^virtual size: .*(\([0-9]*\) bytes).*/\1/p' <<<"$out")
	[ "$got" = "$SIZE_BYTES" ] || die "$t: size is ${got:-unknown} bytes, want $SIZE_BYTES:"$'\n'"$out"
done

# ---- runs --------------------------------------------------------------------

printf 'kind\tworkload\ttarget\trep\tcount\tsize\tdepth\tseconds\tstatus\tcpu_s\tlink_cpu_s\tlink_rtt\targs\n' >"$RAW"
declare -A FAILS=()
CUR_PID=

# timed_run LOGFILE LAB CMD...: runs CMD in the background under timeout
# (so the exit trap can stop it), waits, and returns its status. With a
# LAB (the target's; "" for tgtd) it checks every 50 ms that the lab still
# runs, and stops CMD if it does not (an initiator would otherwise retry
# its login until the timeout): then RUN_WHY=lab-gone.
timed_run() {
	local logf=$1 lab=$2 rc=0
	shift 2
	timeout -k 5 "$RUN_TIMEOUT" "$@" >"$logf" 2>&1 &
	CUR_PID=$!
	if [ -n "$lab" ]; then
		while proc_alive "$CUR_PID"; do
			if ! lab_alive "$lab"; then
				RUN_WHY='lab-gone'
				lab_gone_note "$lab"
				kill -TERM "$CUR_PID" 2>/dev/null || true
				break
			fi
			nap 0.05
		done
	fi
	wait "$CUR_PID" || rc=$?
	CUR_PID=
	return "$rc"
}

# lab_gone_note LAB: says once that LAB's `metro lab up` or one of its
# arrays exited (something outside the bench stopped it, or it crashed).
declare -A GONE_NOTED=()
lab_gone_note() {
	[ -z "${GONE_NOTED[$1]:-}" ] || return 0
	GONE_NOTED[$1]=1
	log "lab $1 is gone (metro lab up or one of its arrays exited): its remaining runs are skipped; last lines of ${LAB_LOG[$1]}:"
	tail -n 3 "${LAB_LOG[$1]}" >&2
}

# skip_reason TARGET: why TARGET's next run is skipped, if it is.
skip_reason() {
	if [ $((SECONDS - START)) -gt "$DEADLINE" ]; then
		echo "deadline"
	elif [ "${FAILS[$1]:-0}" -ge 2 ]; then
		echo "target-failed"
	elif [ -n "${TARGET_LAB[$1]:-}" ] && ! lab_alive "${TARGET_LAB[$1]}"; then
		echo "lab-gone"
	fi
}

# run_begin TARGET: prepares one run of TARGET — sets a pair target's link
# round trip (RUN_RTT) — and samples the CPU time of its arrays and of the
# link proxy. Fails, with RUN_WHY=link-failed, if the link cannot be set.
run_begin() {
	local t=$1
	RUN_RTT='' RUN_C0='' RUN_L0='' RUN_WHY=''
	set_link "$t" || {
		RUN_WHY=link-failed
		return 1
	}
	read -r -a RUN_PIDS <<<"${CPU_PIDS[$t]:-}"
	[ "${#RUN_PIDS[@]}" = 0 ] || RUN_C0=$(cpu_ticks "${RUN_PIDS[@]}") || RUN_C0=''
	[ -z "${LINK_PID[$t]:-}" ] || RUN_L0=$(cpu_ticks "${LINK_PID[$t]}") || RUN_L0=''
	return 0
}

# run_end TARGET: sets RUN_CPU and RUN_LCPU to the CPU seconds (user +
# system) TARGET's arrays and the link proxy used since run_begin ("" when
# not measured, or when a process is gone).
run_end() {
	local t=$1 c1
	RUN_CPU='' RUN_LCPU=''
	if [ -n "$RUN_C0" ] && c1=$(cpu_ticks "${RUN_PIDS[@]}"); then
		RUN_CPU=$(ticks_secs $((c1 - RUN_C0)))
	fi
	if [ -n "$RUN_L0" ] && c1=$(cpu_ticks "${LINK_PID[$t]}"); then
		RUN_LCPU=$(ticks_secs $((c1 - RUN_L0)))
	fi
}

# cpu_note COUNT: " 52 us CPU/IO" for the progress line, if measured.
cpu_note() {
	[ -n "$RUN_CPU" ] && [ -n "$1" ] && [ "$1" -gt 0 ] || return 0
	awk -v c="$RUN_CPU" -v n="$1" 'BEGIN { printf " %6.0f us CPU/IO", c / n * 1e6 }'
}

# raw_row KIND WORKLOAD TARGET REP COUNT SIZE DEPTH SECONDS STATUS ARGS:
# appends one row to raw.tsv, with the run's CPU and link columns.
raw_row() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9" \
		"${RUN_CPU:-}" "${RUN_LCPU:-}" "${RUN_RTT:-}" "${10}" >>"$RAW"
}

# qemu_run WORKLOAD TARGET REP ARGS...: one timed qemu-img bench; appends a
# raw row. REP 0 is the untimed prefill.
qemu_run() {
	local wl=$1 t=$2 rep=$3 logf secs status rc=0 skip
	shift 3
	local args="$*"
	[[ " $* " != *" -w "* ]] || args="$* --pattern=$PATTERN"
	local count size depth
	count=$(sed -n 's/.*-c \([0-9]*\).*/\1/p' <<<"$args")
	size=$(sed -n 's/.*-s \([0-9]*\).*/\1/p' <<<"$args")
	depth=$(sed -n 's/.*-d \([0-9]*\).*/\1/p' <<<"$args")
	RUN_CPU='' RUN_LCPU='' RUN_RTT='' RUN_WHY=''
	skip=$(skip_reason "$t")
	if [ -n "$skip" ]; then
		[ "$skip" != lab-gone ] || lab_gone_note "${TARGET_LAB[$t]}"
		raw_row qemu "$wl" "$t" "$rep" "$count" "$size" "$depth" "" "skipped-$skip" "$args"
		return 0
	fi
	logf=$RES/logs/qemu.$wl.$t.$rep.log
	secs=''
	if run_begin "$t"; then
		# shellcheck disable=SC2086 # args is a word list on purpose
		timed_run "$logf" "${TARGET_LAB[$t]:-}" qemu-img bench --image-opts "$(image_opts "$t")" $args || rc=$?
		run_end "$t"
		secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\..*/\1/p' "$logf")
	else
		echo "could not set the link rtt to ${TARGET_RTT[$t]}" >"$logf"
	fi
	if [ -n "$RUN_WHY" ]; then
		status=$RUN_WHY
	elif [ "$rc" != 0 ]; then
		status=exit$rc
		[ "$rc" = 124 ] && status=timeout
	elif [ -z "$secs" ]; then
		status=noparse
	else
		status=ok
	fi
	if [ "$status" = ok ]; then
		FAILS[$t]=0
		log "$(printf '%-9s %-14s #%s %8.3f s %9.0f IOPS' "$wl" "$t" "$rep" "$secs" "$(awk -v c="$count" -v s="$secs" 'BEGIN{print (s > 0 ? c / s : 0)}')")$(cpu_note "$count")"
	else
		FAILS[$t]=$((${FAILS[$t]:-0} + 1))
		log "$wl $t #$rep FAILED ($status); last lines of $logf:"
		tail -n 5 "$logf" >&2
	fi
	raw_row qemu "$wl" "$t" "$rep" "$count" "$size" "$depth" "$secs" "$status" "$args"
}

# perf_run TARGET REP: one iscsi-perf read run of PERF_SECONDS.
perf_run() {
	local t=$1 rep=$2 logf iops status rc=0 skip count
	local args="-i $INITIATOR -m 32 -b 8 -t $PERF_SECONDS"
	RUN_CPU='' RUN_LCPU='' RUN_RTT='' RUN_WHY=''
	skip=$(skip_reason "$t")
	if [ -n "$skip" ]; then
		[ "$skip" != lab-gone ] || lab_gone_note "${TARGET_LAB[$t]}"
		raw_row perf perf-r4k-d32 "$t" "$rep" "" 4096 32 "" "skipped-$skip" "$args"
		return 0
	fi
	logf=$RES/logs/perf.$t.$rep.log
	if run_begin "$t"; then
		# shellcheck disable=SC2086
		timed_run "$logf" "${TARGET_LAB[$t]:-}" iscsi-perf $args "iscsi://${PORTAL[$t]}/${IQN[$t]}/${LUN[$t]}" || rc=$?
		run_end "$t"
	else
		echo "could not set the link rtt to ${TARGET_RTT[$t]}" >"$logf"
	fi
	# Progress lines are separated by \r; the last "iops average" is the total.
	iops=$(tr '\r' '\n' <"$logf" | sed -n 's/^iops average \([0-9]*\) .*/\1/p' | tail -n 1)
	if [ -n "$RUN_WHY" ]; then
		status=$RUN_WHY
	elif [ "$rc" != 0 ]; then
		status=exit$rc
		[ "$rc" = 124 ] && status=timeout
	elif [ -z "$iops" ]; then
		status=noparse
	else
		status=ok
	fi
	if [ "$status" = ok ]; then
		FAILS[$t]=0
		count=$((iops * PERF_SECONDS))
		log "$(printf '%-9s %-14s #%s %8s s %9s IOPS' perf "$t" "$rep" "$PERF_SECONDS" "$iops")$(cpu_note "$count")"
	else
		FAILS[$t]=$((${FAILS[$t]:-0} + 1))
		log "iscsi-perf $t #$rep FAILED ($status); last lines of $logf:"
		tr '\r' '\n' <"$logf" | tail -n 5 >&2
		count=
	fi
	# count/seconds reproduces iscsi-perf's own average IOPS.
	raw_row perf perf-r4k-d32 "$t" "$rep" "$count" 4096 32 "$PERF_SECONDS" "$status" "$args"
}

# The pair's four targets are one volume (pod1::vol1 on both arrays):
# it is prefilled once, through the first of them.
log "prefill: writing the first $((PREFILL_COUNT * 64)) KiB of each volume (untimed)"
declare -A PREFILLED=()
for t in "${TARGETS[@]}"; do
	v=${TARGET_LAB[$t]:-$t}
	[ -z "${PREFILLED[$v]:-}" ] || continue
	PREFILLED[$v]=1
	qemu_run prefill "$t" 0 -w -s 65536 -d 32 -c "$PREFILL_COUNT"
done

for wl in "${WORKLOADS[@]}"; do
	log "workload $wl: qemu-img bench ${WL_ARGS[$wl]}"
	for ((r = 1; r <= REPEATS; r++)); do
		for t in "${TARGETS[@]}"; do
			# shellcheck disable=SC2086
			qemu_run "$wl" "$t" "$r" ${WL_ARGS[$wl]}
		done
	done
done

log "iscsi-perf: sequential 4 KiB reads, 32 in flight, ${PERF_SECONDS}s per run"
for ((r = 1; r <= PERF_REPEATS; r++)); do
	for t in "${TARGETS[@]}"; do
		perf_run "$t" "$r"
	done
done

# ---- report ------------------------------------------------------------------

# The pair must still be in sync (pod1 online on both arrays, as both see
# it) and must not have resynced (no baseline bytes sent since the start):
# a pair that fell apart during the runs measured unreplicated writes.
PAIR_OK=1
if want_lab pair; then
	PAIR_END=$(lab_pod_state "${LAB_DIR[pair]}" 2>&1) || PAIR_OK=0
	n=0
	while read -r line; do
		base0=$(grep "^${line%% *} " <<<"$PAIR_START" | sed -n 's/.* baseline_bytes=\([0-9]*\).*/\1/p')
		if [[ $line == *" array-a=online"* && $line == *"array-b=online"* &&
			$line == *" baseline_bytes=${base0:-x}" ]]; then
			n=$((n + 1))
		else
			PAIR_OK=0
		fi
	done <<<"$PAIR_END"
	[ "$n" = 2 ] || PAIR_OK=0
	log "pair at the end: ${PAIR_END//$'\n'/; }"
fi

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "host: $(uname -srm), $(nproc) CPUs, load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "metro: $METRO_REV"
	echo "tgtd: $(tgtd -V 2>&1 | head -n 1); $(qemu-img --version | head -n 1)"
	echo "repeats: $REPEATS per workload and target (alternating targets), iscsi-perf $PERF_REPEATS x ${PERF_SECONDS}s; volume $SIZE; quick=$QUICK"
	echo "targets: ${TARGETS[*]}; load average at the start: $LOAD_START"
	if want_lab pair; then
		echo "pair: array-a (sequencer) + array-b, link through the lab's proxy, rtt set before each run (pair-*: 0s, pair-*-1ms: 1ms)"
	fi
	if want_lab one || want_lab pair; then
		idle=
		for lab in one pair; do
			[ -z "${IDLE_MS[$lab]:-}" ] || idle+="${idle:+, }$lab ${IDLE_MS[$lab]} ms/s"
		done
		echo "CPU: user+system of the target's lab's arrays (/proc/PID/stat) per run ÷ requests; idle arrays: ${idle:-not measured}"
	fi
	if want_lab pair; then
		echo "pair at the start: ${PAIR_START//$'\n'/; }"
		echo "pair at the end:   ${PAIR_END//$'\n'/; }$([ "$PAIR_OK" = 1 ] || echo "  <- NOT IN SYNC, or it resynced, or an array is gone")"
	fi
} >"$RES/meta.txt"

python3 "$BENCH_DIR/summarize.py" --raw "$RAW" --meta "$RES/meta.txt" \
	--json "$RES/summary.json" | tee "$RES/table.txt"
log "raw runs: $RAW; summary: $RES/summary.json; elapsed $((SECONDS - START))s"

[ "$PAIR_OK" = 1 ] || die "the pair was not in sync at the end, or resynced during the runs (see meta.txt and its arrays' logs); its figures may not be those of a stretched pod"
# A run that failed makes the benchmark fail (after the table).
if awk -F'\t' 'NR > 1 && $9 != "ok" { bad = 1 } END { exit !bad }' "$RAW"; then
	die "some runs failed or were skipped (see the status column of $RAW)"
fi
