#!/bin/bash
# Hand reproduction of the audit findings F3, F4, F7 (part), F9, F10, F13, I2 against the built binary.
set -u
BIN=${BIN:-/tmp/iothub13b}
mkdir -p /tmp/repro13b; D=$(mktemp -d /tmp/repro13b/hub.XXXX)
HTTP=127.0.0.1:18580; HTTPS=127.0.0.1:18543; MQTT=127.0.0.1:18583; MQTTS=127.0.0.1:18584
start() { $BIN serve --data $D --http $HTTP --https $HTTPS --mqtt $MQTT --mqtts $MQTTS --log-level warn >>$D/log 2>&1 & echo $! > $D/pid; for i in $(seq 50); do curl -s http://$HTTP/healthz >/dev/null && return; sleep 0.1; done; echo "hub did not start"; tail $D/log; }
stop() { kill $(cat $D/pid); wait $(cat $D/pid) 2>/dev/null; }
api() { curl -s -o /tmp/repro13b/body -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -X "$1" http://$HTTP"$2" ${3:+-d "$3"}; }
start
KEY=$(cat $D/admin.key)
echo "== F3"
api POST /api/v1/orgs/default/apikeys '{"name":"ops","role":"admin"}' >/dev/null; OPS=$(python3 -c 'import json;print(json.load(open("/tmp/repro13b/body"))["key"])')
K0=$KEY; KEY=$OPS; echo "admin of org default revokes the bootstrap key: $(api DELETE /api/v1/orgs/default/apikeys/key_bootstrap) $(cat /tmp/repro13b/body | tr -d '\n ')"
KEY=$K0; echo "bootstrap key revokes itself: $(api DELETE /api/v1/orgs/default/apikeys/key_bootstrap)"
[ -n "${MAIN:-}" ] && KEY=$OPS  # on main the bootstrap key is gone now
if [ -z "${MAIN:-}" ]; then
stop; sqlite3 $D/iothub.db "UPDATE api_keys SET revoked_at = 1 WHERE id = 'key_bootstrap'"; start
echo "start after the bootstrap key was revoked in the DB (audit's state): healthz $(curl -s http://$HTTP/healthz | tr -d '\n ') ; bootstrap key: $(api GET /api/v1/products)"
stop; $BIN admin-key rotate --data $D; start
echo "old bootstrap key after rotate: $(api GET /api/v1/products)"; KEY=$(cat $D/admin.key); echo "new bootstrap key: $(api GET /api/v1/products)"
fi
echo "== F4"
api POST /api/v1/products '{"name":"f4","authMode":"certificate","productKey":"F4P"}' >/dev/null
api POST /api/v1/products/F4P/devices '{"deviceKey":"EDGE1"}' >/dev/null; SECRET=$(python3 -c 'import json;print(json.load(open("/tmp/repro13b/body"))["deviceSecret"])')
cd /tmp/repro13b && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key -out dev.csr -subj /CN=EDGE1 2>/dev/null
api POST /api/v1/products/F4P/devices/EDGE1/certificates "$(python3 -c 'import json;print(json.dumps({"csr":open("dev.csr").read()}))')" >/dev/null
python3 -c 'import json;b=json.load(open("/tmp/repro13b/body"));open("dev.pem","w").write(b["cert"]);open("serial","w").write(b["serial"])'; SERIAL=$(cat serial)
cp $D/ca/chain.pem ca.pem 2>/dev/null || curl -s http://$HTTP/ca.pem > ca.pem
login() { local creds; creds=$($BIN sign -p F4P -d EDGE1 --secret "$1"); eval "mosquitto_pub -h 127.0.0.1 -p ${MQTTS##*:} --cafile ca.pem --cert dev.pem --key dev.key $creds -t /sys/F4P/EDGE1/thing/measurepoint/post -m '{}' -q 1" 2>&1 && echo "login OK" ; }
echo "mTLS login before delete: $(login $SECRET)"
echo "delete device: $(api DELETE /api/v1/products/F4P/devices/EDGE1)"
api GET /api/v1/certificates/$SERIAL >/dev/null; echo "certificate after delete: $(python3 -c 'import json;b=json.load(open("/tmp/repro13b/body"));print(b["status"],b.get("reason"))')"
ocsp=$(openssl ocsp -issuer <(awk 'BEGIN{p=1} /END CERT/{print; exit} {print}' ca.pem) -cert dev.pem -url http://$HTTP/ocsp -CAfile ca.pem 2>&1 | grep dev.pem); echo "OCSP: $ocsp"
curl -s http://$HTTP/crl.pem > crl.pem; echo "in CRL: $(openssl crl -in crl.pem -noout -text | grep -ci "$(echo $SERIAL | tr a-f A-F)")"
api POST /api/v1/products/F4P/devices '{"deviceKey":"EDGE1"}' >/dev/null; SECRET2=$(python3 -c 'import json;print(json.load(open("/tmp/repro13b/body"))["deviceSecret"])')
echo "re-created device logs in with the old certificate: $(login $SECRET2)"
echo "re-created device lists certificates: $(api GET /api/v1/products/F4P/devices/EDGE1/certificates) $(tr -d '\n ' < /tmp/repro13b/body)"
echo "== F13/F9"
TS=$(($(date +%s%N)/1000000)); H=$(sha256sum dev.csr | cut -d' ' -f1)
sig() { printf 'csrSha256%sdeviceKeyEDGE1productKeyF4Ptimestamp%s%s' "$H" "$1" "$2" | sha256sum | cut -d' ' -f1; }
body() { python3 -c 'import json,sys;print(json.dumps({"csr":open("dev.csr").read(),"timestamp":sys.argv[1],"signMethod":"sha256","sign":sys.argv[2]}))' "$1" "$2"; }
curl -s -o /dev/null -w 'bad signature: %{http_code}\n' -X POST http://$HTTP/device/v1/F4P/EDGE1/certificates -d "$(body $TS 00ff)"
# The fresh key of the re-created device was never bound, so a new CSR is needed for F9:
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev2.key -out dev.csr -subj /CN=EDGE1 2>/dev/null; H=$(sha256sum dev.csr | cut -d' ' -f1)
B=$(body $TS $(sig $TS $SECRET2))
for i in 1 2 3 4; do curl -s -o /tmp/repro13b/e$i -w "signed enrollment, same body, try $i: %{http_code}\n" -X POST http://$HTTP/device/v1/F4P/EDGE1/certificates -d "$B"; done
TS2=$((TS+1)); curl -s -o /tmp/repro13b/e5 -w 'fresh signature, same CSR: %{http_code} ' -X POST http://$HTTP/device/v1/F4P/EDGE1/certificates -d "$(body $TS2 $(sig $TS2 $SECRET2))"
python3 -c 'import json;a=json.load(open("/tmp/repro13b/e1"))["serial"];b=json.load(open("/tmp/repro13b/e5"))["serial"];print("same serial:",a==b)'
api GET "/api/v1/audit?limit=20" >/dev/null; python3 -c 'import json;[print("audit:",e["kind"],"org="+e.get("orgId",""),e.get("reason","")) for e in json.load(open("/tmp/repro13b/body"))["events"] if e["kind"]=="device_api.refused"]'
echo "== F10"
openssl ocsp -issuer <(awk '/END CERT/{print; exit} {print}' ca.pem) -cert dev.pem -reqout ocsp.req -no_nonce >/dev/null 2>&1
codes=$(for i in $(seq 300); do curl -s -o /dev/null -w '%{http_code}\n' --data-binary @ocsp.req -H 'Content-Type: application/ocsp-request' http://$HTTP/ocsp; done | sort | uniq -c | tr '\n' ' '); echo "300 OCSP requests: $codes"
echo "== I2"
echo "GET /metrics on https: $(curl -sk -o /dev/null -w '%{http_code}' https://$HTTPS/metrics), on the management listener: $(curl -s -o /dev/null -w '%{http_code}' http://$HTTP/metrics)"
stop
