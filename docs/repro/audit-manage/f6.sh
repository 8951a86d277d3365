#!/bin/bash
# F6: RSS of the hub before and after one viewer GET …/telemetry?limit=1000 on a device
# holding 1000 posts of 60 KiB (the largest a post may be after the fix is 64 KiB).
set -u
BIN=${BIN:-/tmp/iothub13b}
mkdir -p /tmp/repro13b; D=$(mktemp -d /tmp/repro13b/f6.XXXX)
HTTP=127.0.0.1:18680; MQTT=127.0.0.1:18683
$BIN serve --data $D --http $HTTP --https "" --mqtt $MQTT --mqtts "" --log-level warn >>$D/log 2>&1 & PID=$!
for i in $(seq 50); do curl -s http://$HTTP/healthz >/dev/null && break; sleep 0.1; done
KEY=$(cat $D/admin.key)
api() { curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -X "$1" http://$HTTP"$2" ${3:+-d "$3"}; }
api POST /api/v1/products '{"name":"f6","productKey":"F6P"}' >/dev/null
SECRET=$(api POST /api/v1/products/F6P/devices '{"deviceKey":"BIG"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["deviceSecret"])')
CREDS=$($BIN sign -p F6P -d BIG --secret $SECRET)
python3 -c '
import json
blob="y"*(60*1024)
for i in range(1000): print(json.dumps({"id":str(i),"version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"i":i,"blob":blob}}}))' > $D/posts
eval "mosquitto_pub -d -h 127.0.0.1 -p ${MQTT##*:} $CREDS -t /sys/F6P/BIG/thing/measurepoint/post -q 1 -l" < $D/posts | grep -c PUBACK
sleep 2
rss() { grep VmRSS /proc/$PID/status | awk '{print $2/1024 " MiB"}'; }
hwm() { grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}'; }
echo "before: RSS $(rss), peak $(hwm)"
bytes=$(curl -s -o $D/resp -w '%{size_download}' -H "Authorization: Bearer $KEY" "http://$HTTP/api/v1/products/F6P/devices/BIG/telemetry?limit=1000")
cnt=$(python3 -c 'import json,sys;print(len(json.load(open(sys.argv[1]))["samples"]))' $D/resp)
echo "one GET ?limit=1000: $cnt posts, $bytes bytes; after: RSS $(rss), peak $(hwm)"
kill $PID; wait $PID 2>/dev/null; rm -rf $D
