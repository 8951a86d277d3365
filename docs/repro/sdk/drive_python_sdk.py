"""Drives the unchanged EnOS Python SDK 0.1.1 against an iothub.

usage: PYTHONPATH=<sdk clone> /usr/bin/python3 drive_python_sdk.py tcp://host:port GWPK GWDK GWSECRET SUBPK SUBDK SUBSECRET
Prints one line per step: "<step> <code> <data>".
"""
import hashlib
import os
import ssl
import sys
import time
import urllib.parse
import urllib.request

from enos.core.MqttClient import MqttClient
from enos.message.downstream.ota.OtaUpgradeCommand import OtaUpgradeCommand
from enos.message.upstream.ota.OtaGetVersionRequest import OtaGetVersionRequest
from enos.message.upstream.ota.OtaProgressReportRequest import OtaProgressReportRequest
from enos.message.upstream.ota.OtaVersionReportRequest import OtaVersionReportRequest
from enos.message.upstream.status.SubDeviceLoginRequest import SubDeviceLoginRequest
from enos.message.upstream.status.SubDeviceLoginBatchRequest import SubDeviceLoginBatchRequest
from enos.message.upstream.status.SubDeviceLogoutRequest import SubDeviceLogoutRequest
from enos.message.upstream.tag.TagQueryRequest import TagQueryRequest
from enos.message.upstream.tag.TagUpdateRequest import TagUpdateRequest
from enos.message.upstream.topo.SubDeviceInfo import SubDeviceInfo
from enos.message.upstream.topo.TopoAddRequest import TopoAddRequest
from enos.message.upstream.topo.TopoGetRequest import TopoGetRequest
from enos.message.upstream.tsl.EventPostRequest import EventPostRequest
from enos.message.upstream.tsl.MeasurepointPostRequest import MeasurepointPostRequest
from enos.message.upstream.tsl.TslTemplateGetRequest import TslTemplateGetRequest
from enos.message.upstream.tsl.ModelUpRawRequest import ModelUpRawRequest

url, gwpk, gwdk, gwsecret, subpk, subdk, subsecret = sys.argv[1:8]


def show(step, resp):
    if resp is None:
        print(step, "NO-REPLY", flush=True)
    else:
        print(step, resp.get_code(), resp.get_data(), flush=True)


client = MqttClient(url, gwpk, gwdk, gwsecret)
client.get_profile().set_auto_reconnect(False)
upgrades = []
client.register_arrived_message_handler(OtaUpgradeCommand().get_class(),
                                        lambda msg, path: upgrades.append(msg.get_firmware_info()))
client.connect()
print("connected", client.is_connected(), flush=True)

show("topo.add", client.publish(TopoAddRequest.builder().add_sub_device(SubDeviceInfo(subpk, subdk, subsecret)).build()))
show("topo.get", client.publish(TopoGetRequest.builder().build()))
show("combine.login", client.publish(SubDeviceLoginRequest.builder().set_sub_device_info(subpk, subdk, subsecret).build()))
show("sub.measurepoint.post", client.publish(MeasurepointPostRequest.builder().set_product_key(subpk).set_device_key(subdk)
                                             .add_measurepoint("temp", 21.5).build()))
show("combine.logout", client.publish(SubDeviceLogoutRequest.builder().set_sub_product_key(subpk).set_sub_device_key(subdk).build()))
show("combine.login.batch", client.publish(SubDeviceLoginBatchRequest.builder().add_sub_device_info(subpk, subdk, subsecret).build()))
show("tag.update", client.publish(TagUpdateRequest.builder().add_tag("site", "north").add_tags({"rack": "7"}).build()))
show("tag.query", client.publish(TagQueryRequest.builder().query_all().build()))
show("event.post", client.publish(EventPostRequest.builder().set_event_identifier("alarm").add_value("level", 3).build()))
show("tsltemplate.get", client.publish(TslTemplateGetRequest.builder().build()))
show("model.up_raw", client.publish(ModelUpRawRequest.builder().set_payload(bytes([1, 0, 0xff, 0x14])).build()))
resp = client.publish(OtaGetVersionRequest.builder().build())
show("ota.getversion", resp)
offers = resp.get_data() if resp is not None else None
if offers:
    fw = offers[0]
    # The download is this script's own code (the SDK leaves it to the
    # application): the hub's signed, resumable device API.
    ts = str(int(time.time() * 1000))
    fid = fw["fileUrl"].rsplit("/", 1)[1]
    content = "deviceKey%sfirmwareId%sproductKey%stimestamp%s%s" % (gwdk, fid, gwpk, ts, gwsecret)
    sign = hashlib.sha256(content.encode()).hexdigest()
    ctx = ssl.create_default_context(cafile=os.environ["HUB_CA"])
    q = urllib.parse.urlencode({"timestamp": ts, "signMethod": "sha256", "sign": sign})
    with urllib.request.urlopen(fw["fileUrl"] + "?" + q, context=ctx) as r:
        body = r.read()
    print("ota.download", len(body), hashlib.sha256(body).hexdigest() == fw["sign"], flush=True)
    show("ota.progress", client.publish(OtaProgressReportRequest.builder().set_step("50").set_desc("downloading").build()))
    show("ota.progress", client.publish(OtaProgressReportRequest.builder().set_step("100").set_desc("written").build()))
    show("ota.inform", client.publish(OtaVersionReportRequest.builder().set_version(fw["version"]).build()))
print("waiting for pushed upgrade commands", flush=True)
time.sleep(float(os.environ.get("WAIT_PUSH", "0")))
print("upgrade.commands", [(u.version, u.file_url) for u in upgrades], flush=True)
client.close()
