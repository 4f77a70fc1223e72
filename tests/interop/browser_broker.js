// A real browser against the broker's ws:// listener: `node browser_broker.js WS_URL`.
// Headless Debian chromium (driven by playwright-core) loads a page that uses MQTT.js's
// browser build, subscribes, publishes 10 messages at QoS 1 to itself and reports what it
// received; prints that as one JSON line.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const url = process.argv[2];
const bundle = fs.readFileSync(path.join(__dirname, 'node_modules/mqtt/dist/mqtt.min.js'), 'utf8');
const page = `<!doctype html><html><head><script>${bundle}</script></head><body><script>
window.result = new Promise((resolve) => {
  const got = [];
  const c = mqtt.connect(${JSON.stringify(url)}, { clientId: 'browser', protocolVersion: 5, reconnectPeriod: 0 });
  c.on('error', (e) => resolve({ error: String(e) }));
  c.on('message', (topic, payload, packet) => {
    got.push([topic, payload.toString(), packet.qos]);
    if (got.length === 10) c.end(false, () => resolve({ got }));
  });
  c.on('connect', () => c.subscribe('browser/t', { qos: 1 }, () => {
    for (let i = 0; i < 10; i++) c.publish('browser/t', 'm' + i, { qos: 1 });
  }));
  setTimeout(() => resolve({ error: 'timed out', got }), 10000);
});
</script></body></html>`;

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const p = await browser.newPage();
    await p.setContent(page);
    const result = await p.evaluate(() => window.result);
    console.log(JSON.stringify(result));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
