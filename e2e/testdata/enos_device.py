"""An EnOS-style device written with Debian's python3-paho-mqtt.

It signs its login the way the EnOS SDKs do (computed here, independently of
the hub's Go code), posts one measurepoint, answers one service call on a
topic it never subscribed to, then exits. Usage:
    enos_device.py HOST PORT PRODUCT_KEY DEVICE_KEY DEVICE_SECRET
It prints one line per step so the Go test can follow it.
"""
import hashlib
import json
import sys
import time

import paho.mqtt.client as mqtt

host, port, pk, dk, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ts = "%.4f" % (time.time() * 1000)  # the Python SDK sends a float timestamp
fields = {"clientId": dk, "deviceKey": dk, "productKey": pk, "timestamp": ts}
content = "".join(k + fields[k] for k in sorted(fields)) + secret
password = hashlib.sha256(content.encode()).hexdigest().upper()
client_id = "%s|securemode=2,signmethod=sha256,timestamp=%s|" % (dk, ts)

done = {"reply": False, "service": False, "disconnected": False}


def on_connect(client, userdata, flags, rc):
    print("connack", rc, flush=True)
    if rc != 0:
        sys.exit(1)
    base = "/sys/%s/%s/thing/measurepoint/post" % (pk, dk)
    client.subscribe(base + "_reply", qos=1)
    client.publish(base, json.dumps({
        "id": "py-1", "version": "1.0", "method": "thing.measurepoint.post",
        "params": {"measurepoints": {"humidity": 48.5}, "time": int(time.time() * 1000)},
    }), qos=1)


def on_message(client, userdata, msg):
    body = json.loads(msg.payload)
    if msg.topic.endswith("_reply"):
        print("reply", body["code"], flush=True)
        done["reply"] = True
    elif "/thing/service/" in msg.topic:
        print("service", msg.topic.rsplit("/", 1)[1], flush=True)
        client.publish(msg.topic + "_reply", json.dumps({
            "id": body["id"], "code": 200, "data": {"answeredBy": "python"}, "message": "",
        }), qos=1)
        done["service"] = True
    if done["reply"] and done["service"]:
        client.disconnect()


def on_disconnect(client, userdata, rc):
    done["disconnected"] = True


c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
c.username_pw_set(dk + "&" + pk, password)
c.on_connect = on_connect
c.on_message = on_message
c.on_disconnect = on_disconnect
c.connect(host, port, keepalive=30)
deadline = time.time() + 20
# Loop until the DISCONNECT has gone out, so the service reply queued
# before it is written too.
while time.time() < deadline and not done["disconnected"]:
    c.loop(timeout=0.2)
print("done" if done["reply"] and done["service"] else "timeout", flush=True)
