#!/bin/bash
# Runs the Python and Node.js EnOS SDK drivers against a fresh hub built from
# the worktree. Needs: /tmp/sdk14b/py (clone of the Python SDK mirror),
# /tmp/sdk14b/node (the Node SDK built as described in issue-14b.md),
# /usr/bin/python3 with python3-paho-mqtt, node, curl, jq.
set -e
WT=${WT:-$(cd "$(dirname "$0")/../../.." && pwd)}; D=/tmp/sdk14b; N=$(cd "$(dirname "$0")" && pwd)
(cd $WT && go build -o $D/iothub ./cmd/iothub)
[ -f $D/hub.pid ] && kill $(cat $D/hub.pid) 2>/dev/null && sleep 1 || true
rm -rf $D/data
$D/iothub serve --data $D/data --mqtt 127.0.0.1:21883 --mqtts 127.0.0.1:21884 --http 127.0.0.1:21880 --https 127.0.0.1:21843 > $D/hub.log 2>&1 &
echo $! > $D/hub.pid; sleep 3
K=$(cat $D/data/admin.key); H=http://127.0.0.1:21880
api(){ curl -s -H "Authorization: Bearer $K" -H 'Content-Type: application/json' "$@"; }
GWPK=$(api -X POST $H/api/v1/products -d '{"name":"gw","nodeType":"gateway"}' | jq -r .productKey)
SUBPK=$(api -X POST $H/api/v1/products -d '{"name":"sub"}' | jq -r .productKey)
GWS=$(api -X POST $H/api/v1/products/$GWPK/devices -d '{"deviceKey":"gw1"}' | jq -r .deviceSecret)
SS=$(api -X POST $H/api/v1/products/$SUBPK/devices -d '{"deviceKey":"s1"}' | jq -r .deviceSecret)
api -X PUT $H/api/v1/products/$GWPK/thingmodel -d '{"measurepoints":{"temp":{"dataType":"float"}},"events":{"alarm":{"outputData":{"level":{"dataType":"int"}}}},"services":{}}'
head -c 200000 /dev/urandom > $D/fw.bin
FW1=$(api -X POST --data-binary @$D/fw.bin "$H/api/v1/products/$GWPK/firmwares?version=2.1.0&sha256=$(sha256sum $D/fw.bin | cut -d' ' -f1)" | jq -r .firmwareId)
J1=$(api -X POST $H/api/v1/products/$GWPK/ota/jobs -d "{\"firmwareId\":\"$FW1\",\"deviceKeys\":[\"gw1\"]}" | jq -r .jobId)
HUB_CA=$D/data/ca/root.pem WAIT_PUSH=8 PYTHONPATH=$D/py timeout 120 /usr/bin/python3 $N/drive_python_sdk.py tcp://127.0.0.1:21883 $GWPK gw1 $GWS $SUBPK s1 $SS > $D/py-out.txt 2>&1 &
PY=$!
for i in $(seq 60); do grep -q "waiting for pushed" $D/py-out.txt && break; sleep 0.5; done
head -c 1000 /dev/urandom > $D/fw2.bin
FW2=$(api -X POST --data-binary @$D/fw2.bin "$H/api/v1/products/$GWPK/firmwares?version=2.2.0" | jq -r .firmwareId)
J2=$(api -X POST $H/api/v1/products/$GWPK/ota/jobs -d "{\"firmwareId\":\"$FW2\"}" | jq -r .jobId)
wait $PY
echo "== Python SDK"; grep -v "^DEBUG\|^INFO\|^20..-" $D/py-out.txt
echo "job1: $(api $H/api/v1/products/$GWPK/ota/jobs/$J1 | jq -c '{status,devices}')"
echo "job2: $(api $H/api/v1/products/$GWPK/ota/jobs/$J2 | jq -c '{status,devices}')"
GWPK2=$(api -X POST $H/api/v1/products -d '{"name":"gwnode","nodeType":"gateway"}' | jq -r .productKey)
SUBPK2=$(api -X POST $H/api/v1/products -d '{"name":"subnode"}' | jq -r .productKey)
GWS2=$(api -X POST $H/api/v1/products/$GWPK2/devices -d '{"deviceKey":"gwn"}' | jq -r .deviceSecret)
SS2=$(api -X POST $H/api/v1/products/$SUBPK2/devices -d '{"deviceKey":"sn"}' | jq -r .deviceSecret)
echo "== Node.js SDK"
(cd $D/node && NODE_PATH=$D/node/node_modules timeout 60 node $N/drive_node_sdk.js tcp://127.0.0.1:21883 $GWPK2 gwn $GWS2 $SUBPK2 sn $SS2 2>&1)
echo "sub-device via API: tags $(api $H/api/v1/products/$SUBPK2/devices/sn/tags | jq -c .tags) events $(api $H/api/v1/products/$SUBPK2/devices/sn/events | jq -c '.events|length') points $(api $H/api/v1/products/$SUBPK2/devices/sn/measurepoints | jq -c .measurepoints)"
kill $(cat $D/hub.pid)
