#!/bin/bash
# F7 by hand: an openssl-made CA registered and verified with the CLI; one leaf revoked by
# serial (ca revoke-leaf), the CA removed (ca remove); a product deleted and its key re-used by org B.
set -u
BIN=${BIN:-/tmp/iothub13b}
mkdir -p /tmp/repro13b; D=$(mktemp -d /tmp/repro13b/f7.XXXX); cd $D
HTTP=127.0.0.1:18880; MQTTS=127.0.0.1:18884
$BIN serve --data $D/data --http $HTTP --https "" --mqtt "" --mqtts $MQTTS --log-level warn >>$D/log 2>&1 & PID=$!
for i in $(seq 50); do curl -s http://$HTTP/healthz >/dev/null && break; sleep 0.1; done
cli() { $BIN --server http://$HTTP --data-dir $D/data -o json "$@"; }
jq1() { python3 -c 'import json,sys;print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
cli product create --name f7 --auth-mode certificate --product-key F7P >/dev/null
SECRET=$(cli device create -p F7P --device-key OEM1 | jq1 deviceSecret)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 30 -subj /CN=OEM-CA -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
REG=$(cli ca register -p F7P --cert ca.pem); ID=$(echo "$REG" | jq1 id); CODE=$(echo "$REG" | jq1 verificationCode)
leaf() { openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key -out $1.csr -subj "/CN=$2" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > ext; openssl x509 -req -in $1.csr -CA ca.pem -CAkey ca.key -set_serial $3 -out $1.pem -days 1 -extfile ext 2>/dev/null; }
curl -s http://$HTTP/ca.pem > hubca.pem; leaf proof $CODE 99; cli ca verify $ID --cert proof.pem >/dev/null && echo "CA $ID verified"
leaf l1 OEM1 4097; leaf l2 OEM1 4098
login() { local creds; creds=$($BIN sign -p F7P -d OEM1 --secret "$SECRET"); eval "mosquitto_pub -h 127.0.0.1 -p ${MQTTS##*:} --cafile hubca.pem --cert $1.pem --key $1.key $creds -t /sys/F7P/OEM1/thing/measurepoint/post -m '{}' -q 1" 2>&1 | head -1 | sed 's/^$//'; [ ${PIPESTATUS[0]} -eq 0 ] && echo "login OK"; }
echo "leaf 1001 (serial 4097): $(login l1)"
echo "revoke-leaf: $(cli ca revoke-leaf $ID --serial 1001 --reason keyCompromise | tr -d '\n ')"
echo "leaf 1001 after revoke-leaf: $(login l1)"
echo "leaf 1002 (not revoked): $(login l2)"
cli ca remove $ID && echo "ca remove $ID: done"
echo "leaf 1002 after ca remove: $(login l2)"
kill $PID; wait $PID 2>/dev/null; cd /; rm -rf $D
