#!/usr/bin/env node
// Writes the committed seed inputs of the fuzz targets (fuzz/seeds/<target>/) with mqtt-packet,
// an independent encoder, so the fuzzers start from valid packets of every type.
//
//   node tests/interop/make_fuzz_seeds.js      (after `npm ci` in tests/interop)
//
// decode_v311 / decode_v5 seeds are one packet each plus one stream of several packets;
// roundtrip seeds start with the version selector byte (0 = 3.1, 1 = 3.1.1, 2 = 5.0).
'use strict'

const fs = require('fs')
const path = require('path')
const mqtt = require('mqtt-packet')

const out = path.join(__dirname, '..', '..', 'fuzz', 'seeds')
const props = { userProperties: { k: 'v' } }

function common (v5) {
  const p = (extra) => (v5 ? { properties: { ...props, ...extra } } : {})
  return [
    { cmd: 'connect', protocolId: v5 ? 'MQTT' : 'MQTT', protocolVersion: v5 ? 5 : 4, clean: true, clientId: 'c1', keepalive: 60 },
    {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: v5 ? 5 : 4,
      clean: false,
      clientId: 'client-2',
      keepalive: 30,
      username: 'user',
      password: Buffer.from('pass'),
      will: { topic: 'will/t', payload: Buffer.from('bye'), qos: 1, retain: true, ...(v5 ? { properties: { willDelayInterval: 5, contentType: 'text/plain' } } : {}) },
      ...p({ sessionExpiryInterval: 100, receiveMaximum: 10, authenticationMethod: 'm', authenticationData: Buffer.from([1, 2]) })
    },
    { cmd: 'connack', sessionPresent: true, returnCode: 0, reasonCode: 0, ...p({ topicAliasMaximum: 5, assignedClientIdentifier: 'x' }) },
    { cmd: 'publish', topic: 'a/b', payload: Buffer.from('hello'), qos: 0, retain: false, dup: false, ...p({}) },
    { cmd: 'publish', topic: 'a/b/c', payload: Buffer.alloc(40, 7), qos: 1, messageId: 1, retain: true, dup: true, ...p({ payloadFormatIndicator: true, messageExpiryInterval: 9, topicAlias: 2, responseTopic: 'r', correlationData: Buffer.from([9]), subscriptionIdentifier: 3, contentType: 'c' }) },
    { cmd: 'publish', topic: 'q2', payload: Buffer.from([]), qos: 2, messageId: 65535 },
    { cmd: 'puback', messageId: 1, ...(v5 ? { reasonCode: 16, properties: { reasonString: 'no' } } : {}) },
    { cmd: 'pubrec', messageId: 2 },
    { cmd: 'pubrel', messageId: 3 },
    { cmd: 'pubcomp', messageId: 4 },
    { cmd: 'subscribe', messageId: 5, subscriptions: [{ topic: 'a/+/c', qos: 1, ...(v5 ? { nl: true, rap: true, rh: 2 } : {}) }, { topic: '#', qos: 2 }, { topic: '$share/g/x/#', qos: 0 }], ...p({ subscriptionIdentifier: 7 }) },
    { cmd: 'suback', messageId: 5, granted: v5 ? [1, 2, 0x80, 0x97] : [1, 2, 0x80], ...p({ reasonString: 'ok' }) },
    { cmd: 'unsubscribe', messageId: 6, unsubscriptions: ['a/+/c', '#'], ...p({}) },
    { cmd: 'unsuback', messageId: 6, ...(v5 ? { granted: [0, 17], properties: props } : {}) },
    { cmd: 'pingreq' },
    { cmd: 'pingresp' },
    { cmd: 'disconnect', ...(v5 ? { reasonCode: 4, properties: { sessionExpiryInterval: 0, reasonString: 'bye', serverReference: 's' } } : {}) },
    ...(v5 ? [{ cmd: 'auth', reasonCode: 0x18, properties: { authenticationMethod: 'm', authenticationData: Buffer.from([1]), reasonString: 'go' } }] : [])
  ]
}

function gen (packet, protocolVersion) {
  try {
    return mqtt.generate(packet, { protocolVersion })
  } catch (err) {
    throw new Error(`${packet.cmd} v${protocolVersion}: ${err.message}`)
  }
}

function write (target, name, bytes) {
  const dir = path.join(out, target)
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, name), bytes)
}

const v311 = common(false).map((p) => gen(p, 4))
const v5 = common(true).map((p) => gen(p, 5))
const v31 = [gen({ cmd: 'connect', protocolId: 'MQIsdp', protocolVersion: 3, clean: true, clientId: 'old', keepalive: 10, username: 'u', password: Buffer.from('p') }, 3)]
  .concat(v311.slice(2))

v311.forEach((b, i) => write('decode_v311', `${String(i).padStart(2, '0')}-${common(false)[i].cmd}`, b))
write('decode_v311', 'stream', Buffer.concat(v311))
v5.forEach((b, i) => write('decode_v5', `${String(i).padStart(2, '0')}-${common(true)[i].cmd}`, b))
write('decode_v5', 'stream', Buffer.concat(v5))
for (const [sel, list, tag] of [[0, v31, 'v31'], [1, v311, 'v311'], [2, v5, 'v5']]) {
  list.forEach((b, i) => write('roundtrip', `${tag}-${String(i).padStart(2, '0')}`, Buffer.concat([Buffer.from([sel]), b])))
}
console.log(`seeds written to ${out}`)
