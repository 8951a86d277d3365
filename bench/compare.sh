#!/usr/bin/env bash
# compare.sh [--quick] [--profile] [--keep] [--only SCENARIO] [--hub-bin PATH]:
# iothub and Mosquitto side by side.
#
# Builds iothub and iothub-bench, starts iothub and Debian's Mosquitto on
# 127.0.0.1 with the same material (the hub's CA chain, an ECDSA server
# certificate issued by that CA, the hub's CRL, one password per device, an
# ACL confining each device to /sys/{pk}/{dk}/#), provisions the devices
# through the hub's API, runs each scenario against one broker then the
# other, and prints one Markdown table: figure, iothub, mosquitto, ratio.
#   --quick    under two minutes (small counts, short phases)
#   --profile  run the hub in-process under `iothub-bench hub --cpuprofile`
#              and print the top of its CPU profile at the end
#   --keep     keep the work directory (results, configs, logs, profile)
#   --only S   run only the scenarios named S (idle, connect, publish, store, call)
#   --hub-bin  run this iothub binary instead of building one (to compare commits)
# Idle memory is measured over TCP (19,000 connections in full mode, the
# most that fit under the 20,000 open files per process here, with the
# memory of 1,000,000 projected from the slope), TLS with a secret login
# and mutual TLS (2,000 each), each on freshly restarted brokers (with
# --profile, the CPU profile covers the run from the last restart on).
# IOTHUB_SERVE_ARGS adds flags to `iothub serve`, e.g. "--durability power".
# Both brokers run at once on the same 2 cores as the generator; only one
# is loaded at a time.
set -euo pipefail

MODE=full PROFILE= KEEP= ONLY= HUB_BIN=
while [[ $# -gt 0 ]]; do
	case $1 in
	--quick) MODE=quick ;;
	--profile) PROFILE=1 ;;
	--keep) KEEP=1 ;;
	--only) ONLY=$2; shift ;;
	--hub-bin) HUB_BIN=$(realpath "$2"); shift ;;
	*) echo "usage: $0 [--quick] [--profile] [--keep] [--only SCENARIO] [--hub-bin PATH]" >&2; exit 2 ;;
	esac
	shift
done

for tool in go curl python3 /usr/sbin/mosquitto mosquitto_passwd; do
	command -v "$tool" >/dev/null || { echo "compare.sh: $tool is missing (apt-get install -y mosquitto curl python3)" >&2; exit 1; }
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/iothub-compare.XXXXXX)
. "$ROOT/bench/lib.sh"
HUB_PID= MOSQ_PID=
cleanup() {
	stop $HUB_PID $MOSQ_PID
	finish
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# IDLE_N idle TCP connections must fit under the open-files cap of each
# process (20,000 here): the hub's, Mosquitto's and the generator's.
if [[ $MODE == quick ]]; then
	SECRET=1000 CERT=200 SETTLE=0.5s
	CONNECT_N=1000 TLS_N=200 PUB_DEV=10 PUB_DUR=2s RATE_MSGS=2000 IDLE_N=1000 IDLE_TLS_N=200 HOLD=2s CALL_DEV=10 CALL_DUR=2s
else
	SECRET=19000 CERT=2000 SETTLE=2s
	CONNECT_N=10000 TLS_N=2000 PUB_DEV=100 PUB_DUR=10s RATE_MSGS=10000 IDLE_N=19000 IDLE_TLS_N=2000 HOLD=20s CALL_DEV=100 CALL_DUR=10s
fi
SRC_IPS=8

# Open files: the brokers and the generator inherit this shell's limit.
need_files $((IDLE_N + 500))
# Ephemeral ports: each of the SRC_IPS source addresses has its own range.
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
if ((IDLE_N > (PORT_HI - PORT_LO + 1) * SRC_IPS)); then
	echo "compare.sh: $IDLE_N connections from $SRC_IPS source addresses exceed the ephemeral ports $PORT_LO-$PORT_HI" >&2
	exit 1
fi
# fdlimit PID: the open-files cap of a running process.
fdlimit() { awk '/^Max open files/ {print $4}' "/proc/$1/limits"; }

say "build"
(cd "$ROOT" && go build -o "$W/iothub" ./cmd/iothub && go build -o "$W/iothub-bench" ./cmd/iothub-bench)
if [[ -n $HUB_BIN ]]; then cp "$HUB_BIN" "$W/iothub"; fi
B=$W/iothub-bench

HT=$(freeport) HS=$(freeport) HH=$(freeport) HHS=$(freeport)
start_hub() {
	say "start iothub"
	if [[ -n $PROFILE ]]; then
		"$B" hub --cpuprofile "$W/hub.cpu" --data "$W/hub" --mqtt 127.0.0.1:$HT --mqtts 127.0.0.1:$HS --http 127.0.0.1:$HH --https 127.0.0.1:$HHS >>"$W/hub.log" 2>&1 &
	else
		"$W/iothub" serve --data "$W/hub" --mqtt 127.0.0.1:$HT --mqtts 127.0.0.1:$HS --http 127.0.0.1:$HH --https 127.0.0.1:$HHS --log-level warn ${IOTHUB_SERVE_ARGS:-} >>"$W/hub.log" 2>&1 &
	fi
	HUB_PID=$!
	waitport "$HH" 60 && waitport "$HT" 10 && waitport "$HS" 10
	say "iothub may open $(fdlimit "$HUB_PID") files"
}
start_hub

say "provision $SECRET secret and $CERT certificate devices through the API"
"$B" provision --api http://127.0.0.1:$HH --key-file "$W/hub/admin.key" --out "$W/fleet" --secret $SECRET --cert $CERT
curl -fsS http://127.0.0.1:$HH/crl.pem >"$W/fleet/crl.pem"
PK_S=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"][0]["pk"])' "$W/fleet/fleet.json")
PK_C=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cert"][0]["pk"])' "$W/fleet/fleet.json")

say "start mosquitto"
M=$W/mosquitto
mkdir -p "$M"
cp "$W/hub/ca/server-ecdsa.pem" "$W/hub/ca/server-ecdsa.key" "$M/"
"$B" passwd --fleet "$W/fleet/fleet.json" >"$M/passwd"
mosquitto_passwd -U "$M/passwd"
cat >"$M/acl" <<EOF
# the call scenario's application client
user app
topic readwrite /sys/#

# every device: its own topics only (%u: the user name, or the certificate's CN)
pattern readwrite /sys/$PK_S/%u/#
pattern readwrite /sys/$PK_C/%u/#
EOF
MT=$(freeport) MS=$(freeport) MM=$(freeport)
cat >"$M/mosquitto.conf" <<EOF
per_listener_settings true
persistence false
user root
log_dest stderr
log_type error
log_type warning

listener $MT 127.0.0.1
allow_anonymous false
password_file $M/passwd
acl_file $M/acl

listener $MS 127.0.0.1
allow_anonymous false
password_file $M/passwd
acl_file $M/acl
certfile $M/server-ecdsa.pem
keyfile $M/server-ecdsa.key
cafile $W/fleet/ca.pem

listener $MM 127.0.0.1
allow_anonymous false
acl_file $M/acl
certfile $M/server-ecdsa.pem
keyfile $M/server-ecdsa.key
cafile $W/fleet/ca.pem
crlfile $W/fleet/crl.pem
require_certificate true
use_identity_as_username true
EOF
start_mosquitto() {
	/usr/sbin/mosquitto -c "$M/mosquitto.conf" >>"$W/mosquitto.log" 2>&1 &
	MOSQ_PID=$!
	waitport "$MT" 10 && waitport "$MS" 10 && waitport "$MM" 10
	say "mosquitto may open $(fdlimit "$MOSQ_PID") files"
}
start_mosquitto

# restart_brokers: fresh processes for an idle row, because a Go heap
# keeps (and reuses) the pages a previous row's connections freed, so a
# second idle row on the same hub process would measure next to nothing.
restart_brokers() {
	if [[ -n $ONLY && $ONLY != idle ]]; then return 0; fi
	say "restart both brokers"
	stop "$HUB_PID" "$MOSQ_PID"
	HUB_PID= MOSQ_PID=
	start_hub
	start_mosquitto
}

HUB_ARGS=(--fleet "$W/fleet/fleet.json" --broker iothub --login enos --tcp 127.0.0.1:$HT --tls 127.0.0.1:$HS --src-ips $SRC_IPS)
MOSQ_ARGS=(--fleet "$W/fleet/fleet.json" --broker mosquitto --login userpass --tcp 127.0.0.1:$MT --tls 127.0.0.1:$MS --mtls 127.0.0.1:$MM --src-ips $SRC_IPS)

# both SCENARIO ARGS...: the scenario against iothub, then against mosquitto.
both() {
	local s=$1
	shift
	if [[ -n $ONLY && $s != "$ONLY" ]]; then return 0; fi
	say "$s $*"
	"$B" "$s" "${HUB_ARGS[@]}" --settle $SETTLE --pid "$HUB_PID" --api http://127.0.0.1:$HH --key-file "$W/hub/admin.key" "$@" >>"$W/iothub.jsonl"
	"$B" "$s" "${MOSQ_ARGS[@]}" --settle $SETTLE --pid "$MOSQ_PID" "$@" >>"$W/mosquitto.jsonl"
}

T0=$(date +%s)
# Idle memory first, on brokers that have not yet grown their heaps under
# load, each idle row on freshly started brokers. TCP comes last, so that
# the login rows after it find the same warm hub as before the TLS rows.
both idle --label "$IDLE_TLS_N idle connections, tls" --transport tls --n $IDLE_TLS_N --concurrency 16 --hold $HOLD
restart_brokers
both idle --label "$IDLE_TLS_N idle connections, mutual TLS" --transport mtls --n $IDLE_TLS_N --concurrency 16 --hold $HOLD
restart_brokers
both idle --label "$IDLE_N idle connections" --n $IDLE_N --concurrency 64 --hold $HOLD --extrapolate 1000000
both connect --label "secret login, tcp, $CONNECT_N at 1000/s" --transport tcp --n $CONNECT_N --rate 1000
both connect --label "secret login, tcp, max rate" --transport tcp --n $CONNECT_N --concurrency 32
both connect --label "secret login, tls, max rate" --transport tls --n $TLS_N --concurrency 16
both connect --label "mutual TLS, max rate" --transport mtls --n $TLS_N --concurrency 16
both publish --label "publish QoS 0, $PUB_DEV devices, max" --n $PUB_DEV --qos 0 --duration $PUB_DUR
both publish --label "publish QoS 1, $PUB_DEV devices, max" --n $PUB_DEV --qos 1 --duration $PUB_DUR
both publish --label "publish QoS 0 at $RATE_MSGS msg/s" --n $PUB_DEV --qos 0 --rate $RATE_MSGS --duration $PUB_DUR
both publish --label "publish QoS 1 at $RATE_MSGS msg/s" --n $PUB_DEV --qos 1 --rate $RATE_MSGS --duration $PUB_DUR
both store --label "stored posts (measurepoint.post QoS 1), $PUB_DEV devices, max" --n $PUB_DEV --duration $PUB_DUR
both store --label "stored posts at 5000/s, $PUB_DEV devices" --n $PUB_DEV --rate 5000 --duration $PUB_DUR
if [[ $MODE == full ]]; then
	both publish --label "publish QoS 1, tls, $PUB_DEV devices, max" --transport tls --n $PUB_DEV --qos 1 --duration $PUB_DUR
fi
both call --label "service call round trip, $CALL_DEV devices" --n $CALL_DEV --concurrency 16 --duration $CALL_DUR
say "scenarios took $(($(date +%s) - T0)) s"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3), $(/usr/sbin/mosquitto -h | head -1), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$B" table --a "$W/iothub.jsonl" --b "$W/mosquitto.jsonl"

if [[ -n $PROFILE ]]; then
	kill -TERM "$HUB_PID"
	wait "$HUB_PID" || true
	echo
	go tool pprof -top -nodecount=40 "$B" "$W/hub.cpu" 2>/dev/null | head -50
fi
