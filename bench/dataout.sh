#!/usr/bin/env bash
# Data out under load (issue 16): 100 devices post measurepoints at QoS 1
# (iothub-bench store), first with no consumer, then with an SSE consumer
# (iothub stream), an MQTT application ($app, mosquitto_sub) and a webhook
# rule (a local receiver), and reports the ingest rates, what each consumer
# received and the post → SSE consumer latency.
#
#   bench/dataout.sh [--rate N] [--duration D]   (default: max rate, then 10000/s; 10s)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=10s
while [[ $# -gt 0 ]]; do
	case $1 in
	--duration) DUR=$2; shift 2 ;;
	*) echo "unknown flag $1" >&2; exit 2 ;;
	esac
done
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { echo "== $*" >&2; }

(cd "$ROOT" && go build -o "$W/iothub" ./cmd/iothub && go build -o "$W/iothub-bench" ./cmd/iothub-bench)
HT=$(freeport) HH=$(freeport) WH=$(freeport)
"$W/iothub" serve --data "$W/hub" --mqtt 127.0.0.1:$HT --mqtts 127.0.0.1:0 --http 127.0.0.1:$HH --https 127.0.0.1:0 --log-level warn >"$W/hub.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$HH/healthz" >/dev/null 2>&1 && break; sleep 0.3; done
KEY=$(cat "$W/hub/admin.key")
"$W/iothub-bench" provision --api http://127.0.0.1:$HH --key-file "$W/hub/admin.key" --out "$W/fleet" --secret 100 --cert 0 >/dev/null
ARGS=(--fleet "$W/fleet/fleet.json" --broker iothub --login enos --tcp 127.0.0.1:$HT --n 100 --duration "$DUR")
acked() { python3 -c 'import json,sys
r=json.loads(sys.stdin.readline())
f={x["name"]:x["value"] for x in r["figures"]}
print(round(f["PUBACKs (stored on the hub)"]), round(f["posts stored"]))'; }

say "no consumer: max rate"
BASE_MAX=$("$W/iothub-bench" store "${ARGS[@]}" | acked)
say "no consumer: 10000/s"
BASE_10K=$("$W/iothub-bench" store "${ARGS[@]}" --rate 10000 | acked)

say "consumers: SSE, MQTT application, webhook"
"$W/iothub" stream --server http://127.0.0.1:$HH --key "$KEY" --kinds measurepoints | python3 -c '
import sys, json, datetime
n, lat = 0, []
for line in sys.stdin:
    now = datetime.datetime.now(datetime.timezone.utc)
    ev = json.loads(line)
    t = datetime.datetime.fromisoformat(ev["data"]["time"].replace("Z", "+00:00"))
    lat.append((now - t).total_seconds() * 1000)
    n += 1
    open(sys.argv[1] + ".n", "w").write(str(n))
    if n % 2000 == 0:
        s = sorted(lat)
        open(sys.argv[1], "w").write("%d %.1f %.1f\n" % (n, s[len(s)//2], s[int(len(s)*0.99)]))
' "$W/sse.txt" &
PIDS+=($!)
mosquitto_sub -h 127.0.0.1 -p $HT -u '$app' -P "$KEY" -i bench-app -q 1 -t '/sys/+/+/thing/measurepoint/post' >"$W/app.txt" &
PIDS+=($!)
python3 -c '
import http.server, sys, os
n = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global n
        self.rfile.read(int(self.headers["Content-Length"]))
        n += 1
        open(sys.argv[2] + ".tmp", "w").write(str(n)); os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' $WH "$W/hook.txt" &
PIDS+=($!)
sleep 1
curl -fsS -H "Authorization: Bearer $KEY" -d "{\"name\":\"bench\",\"kinds\":[\"measurepoints\"],\"webhook\":{\"url\":\"http://127.0.0.1:$WH/\",\"secret\":\"bench-secret-0123456789\"}}" http://127.0.0.1:$HH/api/v1/rules >/dev/null
sleep 1
count() { python3 -c 'import sys; print(sum(1 for _ in open(sys.argv[1])))' "$1"; }
LASTH=-1
say "with consumers: max rate"
CONS_MAX=$("$W/iothub-bench" store "${ARGS[@]}" | acked)
say "with consumers: 10000/s"
CONS_10K=$("$W/iothub-bench" store "${ARGS[@]}" --rate 10000 | acked)
say "let the consumers drain (webhooks go one by one)"
for _ in $(seq 120); do
	sleep 5
	S=$(cat "$W/sse.txt.n" 2>/dev/null || echo 0) A=$(count "$W/app.txt") H=$(cat "$W/hook.txt" 2>/dev/null || echo 0)
	echo "   sse $S app $A webhook $H" >&2
	[[ $H -ge $(( ${CONS_MAX#* } + ${CONS_10K#* } )) || $H == "$LASTH" ]] && break
	LASTH=$H
done
echo "ingest, no consumer:    max $BASE_MAX (PUBACKs/s, posts stored)   at 10000/s: $BASE_10K"
echo "ingest, with consumers: max $CONS_MAX   at 10000/s: $CONS_10K"
echo "stored in the two consumer runs: $(( ${CONS_MAX#* } + ${CONS_10K#* } ))"
echo "received after the two consumer runs: sse $(cat "$W/sse.txt.n") app $(count "$W/app.txt") webhook $(cat "$W/hook.txt")"
echo "post -> SSE consumer latency (ms) over all events: p50 p99 = $(cut -d' ' -f2,3 "$W/sse.txt")"
