# shellcheck shell=bash disable=SC2034 # the globals set here are read by run.sh
# lib.sh: helpers for bench/run.sh — process control, free loopback
# ports, sizes, and the tgtd reference targets. Sourced by run.sh, not run.
#
# Every process started here is a child of run.sh; its pid is recorded so
# that run.sh's exit trap stops exactly what it started and nothing else.

# log prints a progress line on stderr.
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# die prints an error and exits non-zero (the exit trap cleans up).
die() {
	printf 'bench: error: %s\n' "$*" >&2
	exit 1
}

# proc_alive PID: true while PID runs (a zombie, which kill -0 still
# reports, counts as gone). Builtins only: it is polled during the runs.
proc_alive() {
	local s
	[ -n "$1" ] || return 1
	read -r s 2>/dev/null <"/proc/$1/stat" || return 1
	s=${s##*) }
	[ "${s%% *}" != Z ]
}

# nap SECONDS: sleeps without starting a process (a read with a timeout on
# a pipe nobody writes to), so that polling does not disturb the runs.
exec {NAP_FD}<> <(:)
nap() {
	local _
	read -r -t "$1" -u "$NAP_FD" _ || true
}

# wait_gone PID SECONDS: waits up to SECONDS for PID to exit; true if it did.
wait_gone() {
	local pid=$1 n=$(($2 * 10))
	while [ "$n" -gt 0 ]; do
		proc_alive "$pid" || return 0
		sleep 0.1
		n=$((n - 1))
	done
	! proc_alive "$pid"
}

# reap PID: collects the exit status of our child PID, if it is ours.
reap() { wait "$1" 2>/dev/null || true; }

# stop_pid PID SECONDS SIGNAL...: sends each signal in turn, waiting up to
# SECONDS after each for PID to exit, then SIGKILL as the last resort.
stop_pid() {
	local pid=$1 secs=$2 sig
	shift 2
	proc_alive "$pid" || {
		reap "$pid"
		return 0
	}
	for sig in "$@"; do
		kill "-$sig" "$pid" 2>/dev/null || true
		if wait_gone "$pid" "$secs"; then
			reap "$pid"
			return 0
		fi
	done
	log "pid $pid ignored $*; killing it"
	kill -KILL "$pid" 2>/dev/null || true
	wait_gone "$pid" 5 || true
	reap "$pid"
}

# free_port prints a TCP port that is free on 127.0.0.1 right now.
free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_port HOST PORT SECONDS: waits until something accepts on HOST:PORT.
wait_port() {
	python3 - "$1" "$2" "$3" <<'EOF'
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + secs
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.1)
EOF
}

# size_bytes SIZE: prints SIZE (a byte count with an optional binary
# suffix K, M, G or T: 1G = 1 GiB, as metro's CLI reads it) in bytes.
size_bytes() {
	local s=${1^^} mult=1
	s=${s%IB}
	s=${s%B}
	case $s in
	*K) mult=1024 ;;
	*M) mult=$((1024 ** 2)) ;;
	*G) mult=$((1024 ** 3)) ;;
	*T) mult=$((1024 ** 4)) ;;
	esac
	s=${s%[KMGT]}
	[[ $s =~ ^[0-9]+$ ]] || return 1
	echo $((s * mult))
}

# ---- tgtd references ------------------------------------------------------

# tgtd keeps its control socket at $TGTD_IPC_DIR/socket.<control port>.
TGTD_IPC_DIR=/var/run/tgtd

# Per reference (keyed by target name): tgtd pid, control port, portal,
# target IQN, LUN.
declare -A TGTD_PID=() TGTD_CP=() TGTD_PORTAL=() TGTD_IQN=() TGTD_LUN=()

# tgtd_start NAME BACKING_FILE BSOFLAGS LOGFILE: starts a tgtd of its own
# (own control port, own loopback portal) serving one target
# iqn.2026-11.io.metro.bench:NAME with BACKING_FILE as LUN 1 (LUN 0 is
# tgtd's controller), opened with --bsoflags BSOFLAGS when not empty, open
# to every initiator.
tgtd_start() {
	local name=$1 file=$2 oflags=$3 logf=$4
	local attempt cp port pid ok n
	for attempt in 1 2 3 4 5; do
		# A control port nobody else's tgtd uses (other engineers run
		# their own tgtd on this machine); tgtadm takes at most 32767.
		cp=$((10000 + RANDOM % 22000))
		[ -e "$TGTD_IPC_DIR/socket.$cp" ] && continue
		port=$(free_port)
		echo "== tgtd -f -C $cp --iscsi portal=127.0.0.1:$port (attempt $attempt)" >>"$logf"
		tgtd -f -C "$cp" --iscsi "portal=127.0.0.1:$port" >>"$logf" 2>&1 &
		pid=$!
		TGTD_PID[$name]=$pid
		TGTD_CP[$name]=$cp
		ok=0
		for ((n = 0; n < 100; n++)); do
			proc_alive "$pid" || break
			if tgtadm -C "$cp" --mode system --op show >/dev/null 2>&1; then
				ok=1
				break
			fi
			sleep 0.1
		done
		if [ $ok = 1 ] && wait_port 127.0.0.1 "$port" 10; then
			break
		fi
		stop_pid "$pid" 2 TERM
		unset "TGTD_PID[$name]"
		rm -f "$TGTD_IPC_DIR/socket.$cp" "$TGTD_IPC_DIR/socket.$cp.lock"
		ok=0
	done
	[ "$ok" = 1 ] || die "tgtd for $name did not start; see $logf"

	TGTD_PORTAL[$name]=127.0.0.1:$port
	TGTD_IQN[$name]=iqn.2026-11.io.metro.bench:$name
	TGTD_LUN[$name]=1
	{
		tgtadm -C "$cp" --lld iscsi --mode target --op new --tid 1 \
			--targetname "${TGTD_IQN[$name]}" &&
			tgtadm -C "$cp" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 \
				--backing-store "$file" ${oflags:+--bsoflags "$oflags"} &&
			tgtadm -C "$cp" --lld iscsi --mode target --op bind --tid 1 \
				--initiator-address ALL &&
			tgtadm -C "$cp" --lld iscsi --mode target --op show --tid 1
	} >>"$logf" 2>&1 || die "configuring tgtd for $name failed; see $logf"
}

# tgtd_stop NAME: shuts a reference down. tgtd ignores SIGTERM and SIGINT;
# the way out is to delete its target and then the system via tgtadm.
tgtd_stop() {
	local name=$1 pid=${TGTD_PID[$1]:-} cp=${TGTD_CP[$1]:-}
	[ -n "$pid" ] || return 0
	if proc_alive "$pid"; then
		tgtadm -C "$cp" --mode system --op update --name State --value offline >/dev/null 2>&1 || true
		tgtadm -C "$cp" --lld iscsi --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
		tgtadm -C "$cp" --mode system --op delete >/dev/null 2>&1 || true
	fi
	if wait_gone "$pid" 10; then
		reap "$pid"
	else
		stop_pid "$pid" 2 KILL
	fi
	rm -f "$TGTD_IPC_DIR/socket.$cp" "$TGTD_IPC_DIR/socket.$cp.lock"
	unset "TGTD_PID[$name]"
}

# ---- metro labs -------------------------------------------------------------

# Several labs can run at once (the bench runs a one-array lab and a
# stretched pair side by side). Per lab, keyed by a name of the caller's
# choosing: the `metro lab up` pid, its directory and log, and — once
# lab.json is read — the array pids, names, portals and targets (space
# separated, in lab.json's order: array-a, the sequencer, first), the LUN
# and the link proxy's control URL ("" for one array).
declare -A LAB_PID=() LAB_DIR=() LAB_LOG=() LAB_ARRAY_PIDS=() LAB_ARRAY_NAMES=()
declare -A LAB_PORTALS=() LAB_IQNS=() LAB_LUN=() LAB_PROXY=()

# lab_launch NAME BINARY DIR SIZE INITIATOR LOGFILE [ARG...]: starts
# `metro lab up --dir DIR --size SIZE --initiator INITIATOR ARG...` in the
# background (ARG e.g. --arrays 2 --link-rtt 1ms). lab_wait waits for it.
lab_launch() {
	local name=$1 bin=$2 dir=$3 size=$4 init=$5 logf=$6
	shift 6
	[ -z "${LAB_PID[$name]:-}" ] || die "lab $name is already running"
	mkdir -p "$dir"
	rm -f "$dir/lab.json"
	echo "== $bin lab up --dir $dir --size $size --initiator $init $*" >>"$logf"
	"$bin" lab up --dir "$dir" --size "$size" --initiator "$init" "$@" >>"$logf" 2>&1 &
	LAB_PID[$name]=$!
	LAB_DIR[$name]=$dir
	LAB_LOG[$name]=$logf
}

# lab_info DIR INITIATOR: prints lab.json's arrays' pids, names, portals
# and targets (each a space-separated list), the LUN and the link proxy,
# tab-separated; fails if lab.json does not list INITIATOR.
lab_info() {
	python3 - "$1/lab.json" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
arrays = d.get("arrays") or []
if not arrays:
    sys.exit("lab.json lists no arrays")
if sys.argv[2] and sys.argv[2] not in d.get("initiators", []):
    sys.exit("lab.json does not list initiator %s: %s" % (sys.argv[2], d.get("initiators")))
for a in arrays:
    for k in ("name", "portal", "target"):
        if not a.get(k):
            sys.exit("lab.json: an array lacks %s: %s" % (k, a))
col = lambda k: " ".join(str(a.get(k) or 0) for a in arrays)
print(col("pid"), col("name"), col("portal"), col("target"), d.get("lun", ""), d.get("link_proxy") or "-", sep="\t")
PY
}

# lab_wait NAME INITIATOR TIMEOUT [RETRY]: waits for the lab's lab.json
# (written only once its arrays are ready for I/O — for a pair, once the
# pod is in sync on both) and reads it into the LAB_* entries of NAME. If
# `metro lab up` exits first, it dies, unless RETRY is 1 and the lab lost
# a race for one of its loopback ports ("address already in use": it picks
# free ports, then binds them later): then it returns 2.
lab_wait() {
	local name=$1 init=$2 secs=$3 retry=${4:-0} n info proxy
	local pid=${LAB_PID[$1]} dir=${LAB_DIR[$1]} logf=${LAB_LOG[$1]}
	for ((n = 0; n < secs * 5; n++)); do
		[ -s "$dir/lab.json" ] && break
		if ! proc_alive "$pid"; then
			local rc=0
			wait "$pid" || rc=$?
			LAB_PID[$name]=
			if [ "$retry" = 1 ] && tail -n 5 "$logf" | grep -q 'address already in use'; then
				log "metro lab up ($name) lost a race for a port: $(tail -n 1 "$logf")"
				return 2
			fi
			printf '%s\n' "--- last lines of $logf:" >&2
			tail -n 20 "$logf" >&2
			die "metro lab up ($name) exited with status $rc before writing $dir/lab.json (is the lab implemented in this build? run with BENCH_METRO=0 for the tgtd references only)"
		fi
		sleep 0.2
	done
	if [ ! -s "$dir/lab.json" ]; then
		printf '%s\n' "--- last lines of $logf:" >&2
		tail -n 20 "$logf" >&2
		die "metro lab up ($name) did not write $dir/lab.json within ${secs}s"
	fi
	info=$(lab_info "$dir" "$init") || die "cannot read $dir/lab.json"
	IFS=$'\t' read -r "LAB_ARRAY_PIDS[$name]" "LAB_ARRAY_NAMES[$name]" "LAB_PORTALS[$name]" \
		"LAB_IQNS[$name]" "LAB_LUN[$name]" proxy <<<"$info"
	[ "$proxy" != - ] || proxy=
	LAB_PROXY[$name]=$proxy
	[ -n "${LAB_LUN[$name]}" ] || die "$dir/lab.json lacks the lun: $info"
}

# lab_start NAME BINARY DIR SIZE INITIATOR LOGFILE TIMEOUT [ARG...]:
# lab_launch, then lab_wait; up to three attempts when the lab loses a race
# for a port (each in a fresh DIR.N, since the lab keeps its chosen ports
# in its configs).
lab_start() {
	local name=$1 bin=$2 dir=$3 size=$4 init=$5 logf=$6 secs=$7 attempt d rc
	shift 7
	for attempt in 1 2 3; do
		d=$dir
		[ "$attempt" = 1 ] || d=$dir.$attempt
		lab_launch "$name" "$bin" "$d" "$size" "$init" "$logf" "$@"
		rc=0
		lab_wait "$name" "$init" "$secs" "$([ "$attempt" -lt 3 ] && echo 1 || echo 0)" || rc=$?
		[ "$rc" = 2 ] || return "$rc"
	done
}

# lab_alive NAME: true while the lab's `metro lab up` and every array it
# listed in lab.json run.
lab_alive() {
	local p
	for p in "${LAB_PID[$1]:-}" ${LAB_ARRAY_PIDS[$1]:-}; do
		proc_alive "$p" || return 1
	done
}

# lab_field NAME FIELD I: the I-th (from 0) word of LAB_<FIELD>[NAME],
# e.g. lab_field pair PORTALS 1 is array-b's portal.
lab_field() {
	local -n _m="LAB_$2"
	local -a w
	read -r -a w <<<"${_m[$1]:-}"
	[ "$3" -lt "${#w[@]}" ] || return 1
	echo "${w[$3]}"
}

# lab_stop NAME: interrupts `metro lab up` (it stops its arrays, SIGTERM
# then SIGKILL after 10 s) and waits; if it will not stop, kills it, then
# kills whatever array of that lab's lab.json still runs (an array's
# command line names its config under the lab's directory, so a pid reused
# by another process is left alone).
lab_stop() {
	local name=$1 pid=${LAB_PID[$1]:-} dir=${LAB_DIR[$1]:-} pids p info
	[ -n "$pid" ] || return 0
	pids=${LAB_ARRAY_PIDS[$name]:-}
	if [ -z "$pids" ] && [ -s "$dir/lab.json" ]; then
		# Interrupted while lab.json was being written: read what is there.
		info=$(lab_info "$dir" "" 2>/dev/null) && pids=${info%%$'\t'*}
	fi
	stop_pid "$pid" 25 INT TERM
	for p in $pids; do
		[ "$p" -gt 0 ] 2>/dev/null || continue
		if proc_alive "$p" && grep -qaF "$dir/" "/proc/$p/cmdline" 2>/dev/null; then
			log "array pid $p of lab $name outlived metro lab up; killing it"
			kill -KILL "$p" 2>/dev/null || true
		fi
	done
	LAB_PID[$name]=
}

# lab_stop_all: stops every lab, interrupting them all first so that their
# arrays shut down in parallel.
lab_stop_all() {
	local name
	for name in "${!LAB_PID[@]}"; do
		if [ -n "${LAB_PID[$name]}" ]; then kill -INT "${LAB_PID[$name]}" 2>/dev/null || true; fi
	done
	for name in "${!LAB_PID[@]}"; do lab_stop "$name"; done
}

# ---- link proxy ---------------------------------------------------------------

# link_get URL: prints the link's rtt as the proxy reports it (a Go
# duration: "0s", "1ms").
link_get() {
	python3 - "$1" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/link", timeout=10) as r:
    print(json.load(r)["rtt"])
PY
}

# link_set_rtt URL RTT: sets the link's round trip (a Go duration) with
# PUT URL/link {"rtt": RTT}; it applies to the existing connections at
# once. Prints the rtt the proxy reports afterwards; fails if the PUT
# fails.
link_set_rtt() {
	python3 - "$1" "$2" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/link", method="PUT",
                             data=json.dumps({"rtt": sys.argv[2]}).encode(),
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.load(r)["rtt"])
except urllib.error.HTTPError as e:
    sys.exit("PUT %s/link: %s: %s" % (sys.argv[1], e.code, e.read().decode(errors="replace").strip()))
PY
}

# ---- CPU accounting -----------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# cpu_ticks PID...: prints the CPU time (user + system, all threads, in
# clock ticks: fields 14 and 15 of /proc/PID/stat) the PIDs have used so
# far, summed; fails if one is gone.
cpu_ticks() {
	local p s sum=0
	local -a fields
	for p in "$@"; do
		s=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
		# Fields after "pid (comm) " start with field 3 (state).
		read -r -a fields <<<"${s##*) }"
		sum=$((sum + fields[11] + fields[12]))
	done
	echo "$sum"
}

# ticks_secs TICKS: TICKS as seconds (two decimals at CLK_TCK 100).
ticks_secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }'; }

# ---- pair state ---------------------------------------------------------------

# lab_pod_state DIR: asks every array of the lab in DIR (its API, with the
# token and certificate from lab.json) about the lab's pod and prints one
# line per array: name, the pod's sequencer, the pod's status on each
# array as this one sees it, and the bytes this array sent over the
# replication link as mirror (sequencer → follower), forward (follower →
# sequencer) and baseline (copies and resyncs) traffic. If an array does
# not answer, prints a line saying so and fails.
lab_pod_state() {
	python3 - "$1/lab.json" <<'PY'
import json, ssl, sys, urllib.request
d = json.load(open(sys.argv[1]))
def get(a, path):
    ctx = ssl.create_default_context(cafile=a["ca"]) if a.get("ca") else None
    req = urllib.request.Request(a["api"] + "/api/v1" + path,
                                 headers={"Authorization": "Bearer " + a["token"]})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        return json.load(r)
rc = 0
for a in d["arrays"]:
    try:
        p = get(a, "/pods/" + d.get("pod", "pod1"))
        link = get(a, "/array").get("link") or {}
    except Exception as e:
        print("%s error: %s" % (a["name"], getattr(e, "reason", e)))
        rc = 1
        continue
    st = ",".join("%s=%s" % (x["name"], x["status"]) for x in p.get("arrays", []))
    print("%s sequencer=%s %s mirror_bytes=%s forward_bytes=%s baseline_bytes=%s" % (
        a["name"], p.get("sequencer", "?"), st, link.get("mirror_bytes", 0),
        link.get("forward_bytes", 0), link.get("baseline_bytes", 0)))
sys.exit(rc)
PY
}
