#!/bin/bash
# Audit reproductions by hand, device side (F1 F2 F5 F11 I1). Usage: repro.sh BINARY BASEPORT [serve flags...]
BIN=$1; BASE=$2; shift 2
D=$(mktemp -d); cd $D
MQTT=127.0.0.1:$BASE; MQTTS=127.0.0.1:$((BASE+1)); HTTP=127.0.0.1:$((BASE+2)); HTTPS=127.0.0.1:$((BASE+3))
$BIN serve --data $D/data --mqtt $MQTT --mqtts $MQTTS --http $HTTP --https $HTTPS "$@" > $D/serve.log 2>&1 &
HUB=$!
for i in $(seq 1 100); do grep -q "iothub ready" $D/serve.log && break; sleep 0.2; done
cli() { $BIN --server http://$HTTP --data-dir $D/data -o json "$@"; }
j() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
login() { eval "L=($($BIN sign -p $1 -d $2 --secret $3 ${4:+--securemode $4} ${5:+--signmethod $5}))"; }
count() { curl -s -H "Authorization: Bearer $(cat $D/data/admin.key)" "http://$HTTP/api/v1/products/$1/devices?limit=1000" | j "['devices'].__len__()"; }
rr() { mosquitto_rr -h 127.0.0.1 -p $BASE -V mqttv311 -W 5 "$@"; }
reg() { # pk dk secret payload-params
  login $1 $2 $3; rr "${L[@]}" -t /sys/$1/$2/thing/device/register -e /sys/$1/$2/thing/device/register_reply \
     -m "{\"id\":\"1\",\"method\":\"thing.device.register\",\"params\":$4}"; }

echo "### F1: a plain device registers devices in a certificate-mode product (auto-registration off)"
PLAIN=$(cli product create --name plain | j "['productKey']")
PD=$(cli device create -p $PLAIN --device-key dev1); PDS=$(echo "$PD" | j "['deviceSecret']")
CERTP=$(cli product create --name certs --auth-mode certificate | j "['productKey']")
cli device create -p $CERTP --device-key existing >/dev/null
reg $PLAIN dev1 $PDS "[{\"productKey\":\"$CERTP\",\"deviceKey\":\"invented\"}]"; echo
echo "702 probe of an existing key in that product:"
reg $PLAIN dev1 $PDS "[{\"productKey\":\"$CERTP\",\"deviceKey\":\"existing\"}]"; echo
echo "1000 devices from one device (10 requests of 100):"
START=$(date +%s.%N)
for b in $(seq 0 9); do
  P=$(python3 -c "import json; print(json.dumps([{'productKey':'$CERTP','deviceKey':'f%d-%d'%($b,i)} for i in range(100)]))")
  reg $PLAIN dev1 $PDS "$P" | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['code'], len(r.get('data') or []), r.get('message',''))"
done
echo "elapsed $(python3 -c "print(round($(date +%s.%N)-$START,2))") s; devices in $CERTP now: $(count $CERTP)"

if GW=$(cli product create --name gw --node-type gateway 2>/dev/null | j "['productKey']" 2>/dev/null); then
  echo "### F1 after: a gateway into a product that allows gateway registration, 10 x 100 at once"
  OPEN=$(cli product create --name open --allow-gateway-registration | j "['productKey']")
  GWS=$(cli device create -p $GW --device-key gw1 | j "['deviceSecret']")
  reg $GW gw1 $GWS "[{\"productKey\":\"$CERTP\",\"deviceKey\":\"x\"}]"; echo
  for b in $(seq 0 9); do
    P=$(python3 -c "import json; print(json.dumps([{'productKey':'$OPEN','deviceKey':'g%d-%d'%($b,i)} for i in range(100)]))")
    reg $GW gw1 $GWS "$P" | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['code'], len(r.get('data') or []), r.get('message',''))"
  done
  echo "devices in $OPEN: $(count $OPEN)"
fi

echo "### F2: securemode 3 of a certificate-mode product over plain TCP"
ACT=$(cli product create --name act --auth-mode certificate --dynamic-activation)
ACTP=$(echo "$ACT" | j "['productKey']"); ACTS=$(echo "$ACT" | j "['productSecret']")
cli device create -p $ACTP --device-key SN1 >/dev/null
login $ACTP SN1 $ACTS 3; timeout 5 mosquitto_sub -h 127.0.0.1 -p $BASE -V mqttv311 "${L[@]}" -t /ext/session/$ACTP/SN1/thing/activate/info -C 1 -W 4 2>&1 | cut -c1-200
echo "(exit $?)"

echo "### F11: 50,000 subscriptions in one session"
RSS0=$(grep VmRSS /proc/$HUB/status)
login $PLAIN dev1 $PDS; /usr/bin/python3 - $BASE "${L[@]}" <<'PY'
import sys, paho.mqtt.client as mqtt, time
port=int(sys.argv[1]); a=sys.argv[2:]
cid=a[a.index('-i')+1]; user=a[a.index('-u')+1]; pw=a[a.index('-P')+1]
pk=user.split('&')[1]; dk=user.split('&')[0]
c=mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311); c.username_pw_set(user,pw)
codes=[]
c.on_subscribe=lambda cl,u,mid,q: codes.extend(q)
c.on_connect=lambda cl,u,f,rc: print("CONNACK", rc)
c.connect("127.0.0.1",port); c.loop_start(); time.sleep(0.5)
for b in range(500):
    c.subscribe([("/sys/%s/%s/t/%d/%d"%(pk,dk,b,i),0) for i in range(100)])
t=time.time()
while len(codes)<50000 and time.time()-t<60: time.sleep(0.1)
print("granted", sum(1 for q in codes if q==0), "refused (0x80)", sum(1 for q in codes if q==0x80))
time.sleep(1)
c.disconnect()
PY
echo "hub $RSS0 before; $(grep VmRSS /proc/$HUB/status) after"

echo "### F5: five bad logins, then the right secret"
login $PLAIN dev1 wrongsecret; for i in 1 2 3 4 5 6; do mosquitto_pub -h 127.0.0.1 -p $BASE -V mqttv311 "${L[@]}" -t /sys/$PLAIN/dev1/x -m x 2>&1 | head -1; done
echo "right secret:"; login $PLAIN dev1 $PDS; mosquitto_pub -h 127.0.0.1 -p $BASE -V mqttv311 "${L[@]}" -t /sys/$PLAIN/dev1/thing/x -m x 2>&1 | head -1; echo "(exit ${PIPESTATUS[0]})"

echo "### I1: replay of a captured CONNECT signed 2 h ago; MD5 login (device dev2)"
PDS2=$(cli device create -p $PLAIN --device-key dev2 | j "['deviceSecret']")
OLD=$(python3 -c "import time; print(int(time.time()*1000)-7200000)")
CID="dev2|securemode=2,signmethod=sha256,timestamp=$OLD|"
PASS=$(python3 -c "import hashlib; print(hashlib.sha256(b'clientIddev2deviceKeydev2productKey$PLAIN'+b'timestamp$OLD'+b'$PDS2').hexdigest())")
mosquitto_pub -h 127.0.0.1 -p $BASE -V mqttv311 -i "$CID" -u "dev2&$PLAIN" -P $PASS -t /sys/$PLAIN/dev2/thing/x -m x 2>&1 | head -1; echo "(replay exit ${PIPESTATUS[0]})"
login $PLAIN dev2 $PDS2 2 md5; mosquitto_pub -h 127.0.0.1 -p $BASE -V mqttv311 "${L[@]}" -t /sys/$PLAIN/dev2/thing/x -m x 2>&1 | head -1; echo "(md5 exit ${PIPESTATUS[0]})"
if cli product update $PLAIN --sign-methods sha256 >/dev/null 2>&1; then
  login $PLAIN dev2 $PDS2 2 md5; mosquitto_pub -h 127.0.0.1 -p $BASE -V mqttv311 "${L[@]}" -t /sys/$PLAIN/dev2/thing/x -m x 2>&1 | head -1; echo "(md5 after --sign-methods sha256: exit ${PIPESTATUS[0]})"
  login $PLAIN dev2 $PDS2 2 sha256; mosquitto_pub -h 127.0.0.1 -p $BASE -V mqttv311 "${L[@]}" -t /sys/$PLAIN/dev2/thing/x -m x 2>&1 | head -1; echo "(sha256 after --sign-methods sha256: exit ${PIPESTATUS[0]})"
fi
kill $HUB; wait $HUB 2>/dev/null
