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
# reports, counts as gone).
proc_alive() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	[ "${s%% *}" != Z ]
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

# ---- metro lab --------------------------------------------------------------

# Set by lab_start: the `metro lab up` pid and the array pids read from
# lab.json (for the last resort when lab up will not stop).
LAB_PID=
LAB_ARRAY_PIDS=

# lab_start BINARY DIR SIZE INITIATOR LOGFILE TIMEOUT: runs `metro lab up`
# in the background and waits for DIR/lab.json (written only once the
# array is ready for I/O). Sets METRO_PORTAL, METRO_IQN, METRO_LUN.
lab_start() {
	local bin=$1 dir=$2 size=$3 init=$4 logf=$5 secs=$6 n info
	mkdir -p "$dir"
	echo "== $bin lab up --dir $dir --size $size --initiator $init" >>"$logf"
	"$bin" lab up --dir "$dir" --size "$size" --initiator "$init" >>"$logf" 2>&1 &
	LAB_PID=$!
	for ((n = 0; n < secs * 5; n++)); do
		[ -s "$dir/lab.json" ] && break
		if ! proc_alive "$LAB_PID"; then
			local rc=0
			wait "$LAB_PID" || rc=$?
			LAB_PID=
			printf '%s\n' "--- last lines of $logf:" >&2
			tail -n 20 "$logf" >&2
			die "metro lab up exited with status $rc before writing $dir/lab.json (is the lab implemented in this build? run with BENCH_METRO=0 for the tgtd references only)"
		fi
		sleep 0.2
	done
	if [ ! -s "$dir/lab.json" ]; then
		printf '%s\n' "--- last lines of $logf:" >&2
		tail -n 20 "$logf" >&2
		die "metro lab up did not write $dir/lab.json within ${secs}s"
	fi
	info=$(python3 - "$dir/lab.json" "$init" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
a = d["arrays"][0]
if sys.argv[2] not in d.get("initiators", []):
    print("lab.json does not list initiator %s: %s" % (sys.argv[2], d.get("initiators")), file=sys.stderr)
    sys.exit(1)
pids = " ".join(str(x.get("pid")) for x in d["arrays"] if x.get("pid"))
print(a["portal"], a["target"], d["lun"], pids, sep="\t")
PY
	) || die "cannot read $dir/lab.json"
	IFS=$'\t' read -r METRO_PORTAL METRO_IQN METRO_LUN LAB_ARRAY_PIDS <<<"$info"
	if [ -z "$METRO_PORTAL" ] || [ -z "$METRO_IQN" ] || [ -z "$METRO_LUN" ]; then
		die "lab.json lacks portal, target or lun: $info"
	fi
}

# lab_stop: interrupts `metro lab up` (it stops its arrays) and waits; if it
# will not stop, kills it and the arrays lab.json named.
lab_stop() {
	local p
	[ -n "$LAB_PID" ] || return 0
	stop_pid "$LAB_PID" 15 INT TERM
	for p in $LAB_ARRAY_PIDS; do
		if proc_alive "$p" && grep -qa metro "/proc/$p/cmdline" 2>/dev/null; then
			log "array pid $p outlived metro lab up; killing it"
			kill -KILL "$p" 2>/dev/null || true
		fi
	done
	LAB_PID=
}
