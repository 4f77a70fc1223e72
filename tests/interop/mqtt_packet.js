#!/usr/bin/env node
// Line-oriented bridge to the npm package `mqtt-packet`, used by the differential interop tests.
//
// Reads one JSON request per line on stdin and writes one JSON response per line on stdout:
//
//   {"op":"parse","protocolVersion":4,"hex":"c000"}
//     -> {"ok":true,"packets":[{"cmd":"pingreq",...}],"left":0}
//        `left` is the number of trailing bytes mqtt-packet did not consume (an incomplete packet).
//   {"op":"generate","protocolVersion":5,"packet":{"cmd":"pingreq"}}
//     -> {"ok":true,"hex":"c000"}
//   any failure
//     -> {"ok":false,"error":"..."}
//
// Bytes are exact in both directions: every Buffer in a parsed packet becomes {"hex":"..."}, and
// every {"hex":"..."} object in a packet to generate becomes a Buffer first.
'use strict'

const readline = require('readline')
const mqtt = require('mqtt-packet')

// Buffer (or Uint8Array) -> {hex}, recursively; everything else kept as JSON would keep it.
function toJson (value) {
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
    return { hex: Buffer.from(value).toString('hex') }
  }
  if (Array.isArray(value)) return value.map(toJson)
  if (value !== null && typeof value === 'object') {
    const out = {}
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) out[k] = toJson(v)
    }
    return out
  }
  if (typeof value === 'bigint') return value.toString()
  return value
}

function isHexObject (value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) &&
    Object.keys(value).length === 1 && typeof value.hex === 'string'
}

// {hex} -> Buffer, recursively.
function fromJson (value) {
  if (isHexObject(value)) {
    if (!/^([0-9a-fA-F]{2})*$/.test(value.hex)) throw new Error(`bad hex string: ${value.hex}`)
    return Buffer.from(value.hex, 'hex')
  }
  if (Array.isArray(value)) return value.map(fromJson)
  if (value !== null && typeof value === 'object') {
    const out = {}
    for (const [k, v] of Object.entries(value)) out[k] = fromJson(v)
    return out
  }
  return value
}

function parse (req) {
  if (typeof req.hex !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(req.hex)) {
    throw new Error('parse needs an even-length "hex" string')
  }
  const parser = mqtt.parser({ protocolVersion: req.protocolVersion })
  const packets = []
  let error = null
  parser.on('packet', (packet) => packets.push(toJson(packet)))
  parser.on('error', (err) => { if (error === null) error = err })
  const left = parser.parse(Buffer.from(req.hex, 'hex'))
  if (error !== null) throw error
  return { ok: true, packets, left }
}

function generate (req) {
  if (req.packet === null || typeof req.packet !== 'object') {
    throw new Error('generate needs a "packet" object')
  }
  const packet = fromJson(req.packet)
  const buf = mqtt.generate(packet, { protocolVersion: req.protocolVersion })
  return { ok: true, hex: buf.toString('hex') }
}

function handle (line) {
  try {
    const req = JSON.parse(line)
    if (req.protocolVersion !== undefined && ![3, 4, 5].includes(req.protocolVersion)) {
      throw new Error(`unsupported protocolVersion ${req.protocolVersion}`)
    }
    switch (req.op) {
      case 'parse': return parse(req)
      case 'generate': return generate(req)
      default: throw new Error(`unknown op ${JSON.stringify(req.op)}`)
    }
  } catch (err) {
    return { ok: false, error: String(err && err.message ? err.message : err) }
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false })
rl.on('line', (line) => {
  if (line.trim() === '') return
  process.stdout.write(JSON.stringify(handle(line)) + '\n')
})
