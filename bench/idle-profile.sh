#!/usr/bin/env bash
# idle-profile.sh [--n 10000] [--window 60s] [--transport tcp|tls|mtls]
#                 [--hub-bin PATH] [--settle 20s] [--keepalive 60s]
#                 [--memprofilerate 4096] [--keep]
#
# Where an idle connection's memory goes, and what the hub allocates while
# its devices say nothing. It starts a hub on 127.0.0.1 (free ports, a
# temporary data directory), provisions N devices through the API (secret
# devices for tcp and tls, certificate devices for mtls), connects them
# with `iothub-bench idle` and holds them, waits --settle, then:
#   1. reads the runtime's memory figures after a GC (HeapInuse, StackInuse,
#      goroutines) and the process's RSS, and subtracts those read before
#      the devices connected: the cost per connection;
#   2. takes a heap profile after a GC (heap?gc=1; it holds alloc_space
#      like the allocs profile, which net/http/pprof takes without a GC),
#      waits --window, takes another, and prints `go tool pprof
#      -sample_index=alloc_space -top -base first second` without the
#      profiler's own stacks: every allocation of the idle window (with
#      keepalive 60 s, each device sends one PINGREQ in a 60 s window;
#      --keepalive 300s leaves none), and that total per connection;
#   3. prints the top of the heap profile by inuse_space: who holds the
#      bytes that stay per connection.
#
# The hub: by default `iothub-bench hub --pprof` built from this tree (the
# hub package in-process, net/http/pprof on a loopback port of its own).
# --hub-bin PATH runs another build: an iothub-bench binary (from any
# commit that has `hub --pprof`, e.g. main before and after a change) is
# run the same way; a plain `iothub` binary is run as `iothub serve` and
# gives the RSS figures only, since iothub serve has no profiling endpoint.
# --memprofilerate sets runtime.MemProfileRate in the hub (bytes per sample;
# the Go default, 524288, misses most small allocations; 1 records every
# one and slows logins). --keep keeps the work directory (profiles, logs).
set -euo pipefail

N=10000 WINDOW=60s TRANSPORT=tcp HUB_BIN= SETTLE=20s KEEPALIVE=60s MEMRATE=4096 KEEP=
while [[ $# -gt 0 ]]; do
	case $1 in
	--n) N=$2; shift ;;
	--window) WINDOW=$2; shift ;;
	--transport) TRANSPORT=$2; shift ;;
	--hub-bin) HUB_BIN=$(realpath "$2"); shift ;;
	--settle) SETTLE=$2; shift ;;
	--keepalive) KEEPALIVE=$2; shift ;;
	--memprofilerate) MEMRATE=$2; shift ;;
	--keep) KEEP=1 ;;
	*) echo "usage: $0 [--n 10000] [--window 60s] [--transport tcp|tls|mtls] [--hub-bin PATH] [--settle 20s] [--keepalive 60s] [--memprofilerate 4096] [--keep]" >&2; exit 2 ;;
	esac
	shift
done
case $TRANSPORT in tcp | tls | mtls) ;; *) echo "idle-profile.sh: --transport must be tcp, tls or mtls" >&2; exit 2 ;; esac
for tool in go curl python3; do
	command -v "$tool" >/dev/null || { echo "idle-profile.sh: $tool is missing" >&2; exit 1; }
done
# sleep takes seconds: 60s → 60, 2m → 120.
seconds() { python3 -c 'import sys; s=sys.argv[1]; u={"s":1,"m":60,"h":3600}; print(float(s[:-1])*u[s[-1]] if s[-1] in u else float(s))' "$1"; }
WINDOW_S=$(seconds "$WINDOW") SETTLE_S=$(seconds "$SETTLE")

ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/iothub-idleprof.XXXXXX)
. "$ROOT/bench/lib.sh"
HUB_PID= IDLE_PID=
cleanup() {
	stop $IDLE_PID $HUB_PID
	finish
}
trap cleanup EXIT
trap 'exit 130' INT TERM
need_files $((N + 500))

say "build iothub-bench"
(cd "$ROOT" && go build -o "$W/iothub-bench" ./cmd/iothub-bench)
B=$W/iothub-bench
HUB=$B
if [[ -n $HUB_BIN ]]; then HUB=$HUB_BIN; fi
PPROF=
if "$HUB" hub -h 2>&1 | grep -q -- '-pprof'; then PPROF=1; fi

HT=$(freeport) HS=$(freeport) HH=$(freeport) HHS=$(freeport) HP=$(freeport)
LISTEN=(--data "$W/hub" --mqtt 127.0.0.1:$HT --mqtts 127.0.0.1:$HS --http 127.0.0.1:$HH --https 127.0.0.1:$HHS)
if [[ -n $PPROF ]]; then
	say "start the hub in-process: $HUB hub --pprof 127.0.0.1:$HP"
	"$HUB" hub --pprof 127.0.0.1:$HP --memprofilerate "$MEMRATE" "${LISTEN[@]}" >"$W/hub.log" 2>&1 &
else
	say "start $HUB serve (no profiling endpoint: RSS figures only)"
	"$HUB" serve "${LISTEN[@]}" --log-level warn >"$W/hub.log" 2>&1 &
fi
HUB_PID=$!
waitport "$HH" 60 && waitport "$HT" 10 && waitport "$HS" 10

if [[ $TRANSPORT == mtls ]]; then SECRET=0 CERT=$N; else SECRET=$N CERT=0; fi
say "provision $N devices for $TRANSPORT"
"$B" provision --api http://127.0.0.1:$HH --key-file "$W/hub/admin.key" --out "$W/fleet" --secret $SECRET --cert $CERT

DBG=http://127.0.0.1:$HP/debug/pprof
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$HUB_PID/status"; }
# memstats NAME: after a GC, the runtime's figures into NAME.mem:
# goroutines, HeapAlloc (live heap), HeapInuse (its spans), StackInuse and
# the process's RSS, in bytes.
memstats() {
	local g=0 live=0 heap=0 stack=0
	if [[ -n $PPROF ]]; then
		curl -fsS "$DBG/heap?gc=1&debug=1" >"$W/$1.heap.txt"
		live=$(awk '/^# HeapAlloc = / {print $4}' "$W/$1.heap.txt")
		heap=$(awk '/^# HeapInuse = / {print $4}' "$W/$1.heap.txt")
		stack=$(awk '/^# Stack = / {print $4}' "$W/$1.heap.txt")
		g=$(curl -fsS "$DBG/goroutine?debug=1" | awk 'NR == 1 {print $NF}')
	fi
	echo "$g $live $heap $stack $(rss)" >"$W/$1.mem"
}

memstats base # twice: the first GC after provisioning leaves work for the second
memstats base
say "connect $N idle devices over $TRANSPORT (keepalive $KEEPALIVE)"
"$B" idle --fleet "$W/fleet/fleet.json" --broker iothub --login enos --tcp 127.0.0.1:$HT --tls 127.0.0.1:$HS \
	--transport "$TRANSPORT" --n "$N" --concurrency 64 --src-ips 8 --keepalive "$KEEPALIVE" \
	--pid "$HUB_PID" --hold 24h --ready "$W/ready" --settle 1s >"$W/idle.json" &
IDLE_PID=$!
while [[ ! -e $W/ready ]]; do
	if ! kill -0 "$IDLE_PID" 2>/dev/null; then echo "idle-profile.sh: the idle client ended early" >&2; exit 1; fi
	sleep 1
done
say "$(cat "$W/ready") connected; settle $SETTLE"
sleep "$SETTLE_S"
memstats idle
# The allocation snapshots are heap profiles (they hold alloc_space too):
# net/http/pprof runs a GC first for heap?gc=1, not for allocs, and a
# profile is as of the last GC, which an idle hub may not run for minutes.
if [[ -n $PPROF ]]; then
	curl -fsS "$DBG/heap?gc=1" >"$W/allocs-start.pb.gz"
fi
say "idle window $WINDOW"
sleep "$WINDOW_S"
if [[ -n $PPROF ]]; then
	curl -fsS "$DBG/heap?gc=1" >"$W/allocs-end.pb.gz"
fi
memstats end
stop "$IDLE_PID"
IDLE_PID=

echo
echo "# Idle profile: $N devices over $TRANSPORT, window $WINDOW, keepalive $KEEPALIVE"
echo
echo "hub: $HUB ($(go version "$HUB" | cut -d' ' -f2)$([[ -n $PPROF ]] && echo ", in-process, MemProfileRate $MEMRATE")); $(date -u +%FT%TZ)"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (shared with other work)"
echo "connected after the window: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next((int(f["value"]) for f in r["figures"] if f["name"] == "connected after hold"), 0), "errors", r["errors"])' "$W/idle.json")"
echo
python3 - "$N" "$W/base.mem" "$W/idle.mem" "$W/end.mem" "$PPROF" <<'EOF'
import sys
n = int(sys.argv[1])
base, idle, end = ([float(x) for x in open(p).read().split()] for p in sys.argv[2:5])
pprof = sys.argv[5] == "1"
names = ["goroutines", "HeapAlloc (live heap)", "HeapInuse", "StackInuse", "RSS"]
print("| figure | before connecting | settled | after the window | per connection (settled) |")
print("|---|---:|---:|---:|---:|")
for i, name in enumerate(names):
    if not pprof and i < 4:
        continue
    if i == 0:
        row = [f"{v:.0f}" for v in (base[i], idle[i], end[i])] + [f"{(idle[i] - base[i]) / n:.2f}"]
    else:
        row = [f"{v / 2**20:.1f} MiB" for v in (base[i], idle[i], end[i])] + [f"{(idle[i] - base[i]) / n / 1024:.2f} KiB"]
    print(f"| {name} | " + " | ".join(row) + " |")
EOF
if [[ -z $PPROF ]]; then
	echo
	echo "(no profiles: $HUB has no \`hub --pprof\`; build iothub-bench from that commit for them)"
	exit 0
fi

echo
echo "## Allocations during the idle window (alloc_space, end − start)"
echo
# Not counted: the profiler's own work (writing the first snapshot).
NOT_IDLE='runtime/pprof|net/http/pprof'
go tool pprof -sample_index=alloc_space -top -nodecount=30 -ignore "$NOT_IDLE" -base "$W/allocs-start.pb.gz" "$W/allocs-end.pb.gz" 2>/dev/null | tee "$W/allocs-window.txt"
# The totals: every node shown (their flat values add up to what the
# filter kept; "of … total" would still count the profiler).
for idx in alloc_space alloc_objects; do
	go tool pprof -sample_index=$idx -top -nodecount=100000 -nodefraction=0 -ignore "$NOT_IDLE" \
		-base "$W/allocs-start.pb.gz" "$W/allocs-end.pb.gz" 2>/dev/null >"$W/$idx-all.txt" || true
done
python3 - "$N" "$W/alloc_space-all.txt" "$W/alloc_objects-all.txt" <<'EOF'
import re, sys
n = int(sys.argv[1])
units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "": 1, "k": 1e3, "M": 1e6, "G": 1e9}
def total(path):
    for line in open(path):
        m = re.search(r"accounting for ([\d.]+)([A-Za-z]*),", line)
        if m:
            return float(m.group(1)) * units.get(m.group(2), 1)
    return 0.0
b, o = total(sys.argv[2]), total(sys.argv[3])
print(f"\nidle window in total: {b / 1024:.1f} KiB in {o:.0f} allocations; per connection {b / n:.1f} B in {o / n:.2f} allocations")
EOF

echo
echo "## Heap in use after the window (inuse_space)"
echo
go tool pprof -sample_index=inuse_space -top -nodecount=30 "$W/allocs-end.pb.gz" 2>/dev/null
