// MQTT.js against a broker: `node mqttjs_broker.js URL VERSION` (VERSION 4 = 3.1.1, 5).
// A subscriber at QoS 2 and a publisher send 20 messages at each QoS 0/1/2 and one retained
// message; prints one JSON line: what the subscriber got per QoS, how many of those came with
// a topic alias (the subscriber takes 4 at MQTT 5), and the retained one.
'use strict';
const mqtt = require('mqtt');

const [url, version] = [process.argv[2], Number(process.argv[3] || 4)];
const N = 20;
const opts = (id) => ({ clientId: id, protocolVersion: version, reconnectPeriod: 0, connectTimeout: 5000 });
const fail = (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); };
setTimeout(() => fail('timed out'), 15000).unref();

const connect = (id, extra = {}) => new Promise((resolve, reject) => {
  const c = mqtt.connect(url, { ...opts(id), ...extra });
  c.once('connect', () => resolve(c));
  c.once('error', reject);
});

(async () => {
  const tag = `js${version}-${url.split(':')[0]}`;
  const got = { 0: [], 1: [], 2: [] };
  const aliases = version === 5 ? { properties: { topicAliasMaximum: 4 } } : {};
  const sub = await connect(`${tag}-sub`, aliases);
  let aliased = 0;
  sub.on('message', (topic, payload, packet) => {
    if (packet.properties && packet.properties.topicAlias) aliased++;
    const q = topic.split('/').pop();
    if (q in got) got[q].push({ payload: payload.toString(), qos: packet.qos });
  });
  await sub.subscribeAsync(`${tag}/+`, { qos: 2 });
  const pub = await connect(`${tag}-pub`);
  for (const qos of [0, 1, 2]) {
    for (let i = 0; i < N; i++) await pub.publishAsync(`${tag}/${qos}`, `${i}`, { qos });
  }
  await pub.publishAsync(`${tag}-retained`, 'kept', { qos: 1, retain: true });
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline && got[0].length + got[1].length + got[2].length < 3 * N) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 200));
  const late = await connect(`${tag}-late`);
  const retained = await new Promise((resolve) => {
    late.on('message', (topic, payload, packet) => resolve({ topic, payload: payload.toString(), retain: packet.retain }));
    late.subscribe(`${tag}-retained`, { qos: 1 });
    setTimeout(() => resolve(null), 3000);
  });
  console.log(JSON.stringify({ got, aliased, retained }));
  await Promise.all([sub.endAsync(), pub.endAsync(), late.endAsync()]);
})().catch(fail);
