// Drives the unchanged EnOS Node.js SDK (enos-mqtt-sdk-nodejs 0.4.0, built
// from its TypeScript) against an iothub.
// usage: node drive_node_sdk.js tcp://host:port GWPK GWDK GWSECRET SUBPK SUBDK SUBSECRET
const {GatewayClient, DeviceInfo, SubDeviceInfo, SECURE_MODE} = require('enos-mqtt-sdk-nodejs');

const [brokerUrl, gwpk, gwdk, gwsecret, subpk, subdk, subsecret] = process.argv.slice(2);

function show(step, r) {
  console.log(step, r && r.code, JSON.stringify(r && r.data));
}

async function main() {
  const client = new GatewayClient({
    brokerUrl, productKey: gwpk, deviceKey: gwdk, deviceSecret: gwsecret,
    secureMode: SECURE_MODE.VIA_DEVICE_SECRET, mqttOptions: {reconnectPeriod: 0}
  });
  await client.connect();
  console.log('connected');
  const sub = new SubDeviceInfo({productKey: subpk, deviceKey: subdk, deviceSecret: subsecret});
  const step = async (name, fn) => {
    try {
      show(name, await fn());
    } catch (err) {
      console.log(name, 'ERROR', err && err.message);
    }
  };
  await step('topo.add', () => client.subDeviceManagement.addTopo({subDevices: [sub]}));
  await step('topo.get', () => client.subDeviceManagement.getTopo());
  await step('combine.login', () => client.subDeviceManagement.loginSubDevice({subDevice: sub}));
  const subInfo = new DeviceInfo({productKey: subpk, deviceKey: subdk});
  await step('sub.measurepoint.post', () => client.deviceData.postMeasurepoint({
    deviceInfo: subInfo, point: {measurepoints: {temp: 19.5}}}));
  await step('sub.event.post', () => client.deviceData.postEvent({
    deviceInfo: subInfo, eventName: 'alarm', eventParams: {level: 2}}));
  await step('sub.tag.update', () => client.deviceData.updateTag({
    deviceInfo: subInfo, tags: [{tagKey: 'site', tagValue: 'south'}]}));
  await step('sub.tag.query', () => client.deviceData.queryTag({deviceInfo: subInfo}));
  await step('combine.logout', () => client.subDeviceManagement.logoutSubDevice({subDevice: {productKey: subpk, deviceKey: subdk}}));
  await step('combine.login.batch', () => client.subDeviceManagement.batchLoginSubDevice({subDevices: [sub]}));
  await step('tag.update', () => client.deviceData.updateTag({tags: [{tagKey: 'site', tagValue: 'north'}]}));
  await step('tag.query', () => client.deviceData.queryTag());
  await step('event.post', () => client.deviceData.postEvent({eventName: 'alarm', eventParams: {level: 3}}));
  await step('model.up_raw', async () => ({code: 'raw', data: (await client.deviceData.upRawModel({rawData: Buffer.from([1, 0, 0xff])})).toString()}));
  client.close();
}

main().catch((err) => { console.log('FAILED', err && err.message); process.exit(1); });
