// A private stream: only the shop's signed-in shoppers watch, and their
// buys carry the shop's shopper id.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { KEY, launch, openStudio, startServer, videoStats, waitFor } from './harness.js';

const SECRET = 'e2e-shopper-secret-0123456789abcdef';
let server;
let browser;
before(async () => {
  server = await startServer({ VITRINE_SHOPPER_SECRET: SECRET, VITRINE_PRIVATE_STREAMS: 'demo' });
  browser = await launch();
});
after(async () => { await browser?.close(); server?.stop(); });

// shopperToken signs what a shop's backend would: HS256 with sub and exp.
function shopperToken(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

test('a private stream plays for a signed-in shopper, who buys as the shop\'s shopper', async () => {
  const studio = await openStudio(await browser.newContext(), server.base);
  await studio.click('#golive');
  await studio.waitForSelector('#state[data-state=live]', { timeout: 15000 });
  const cue = await fetch(`${server.base}/api/v1/streams/demo/cues`, { method: 'POST',
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ type: 'card.show', sku: 'demo-mug' }) });
  assert.equal(cue.status, 201);

  // Without a token: told why, never connected.
  const stranger = await (await browser.newContext()).newPage();
  await stranger.goto(`${server.base}/watch/demo`);
  await stranger.waitForFunction(() => document.querySelector('vitrine-player').state === 'private', null, { timeout: 10000 });
  assert.match(await stranger.evaluate(() => document.querySelector('vitrine-player').shadowRoot.querySelector('.status').textContent), /signed-in shoppers/);

  // A shop page passes the token it signed. The page is loaded as a shop
  // would serve it (setContent's document.write left the element without
  // its class in Chromium 156.0.8078.129).
  const shop = await (await browser.newContext()).newPage();
  const shopURL = `${server.base}/e2e-shop.html`;
  await shop.route(shopURL, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html>
    <script type="module" src="${server.base}/sdk/vitrine-player.js"></script>
    <vitrine-player server="${server.base}" stream="demo" shopper-token="${shopperToken('cust-e2e-7')}"></vitrine-player>` }));
  await shop.goto(shopURL);
  await waitFor('the shopper decodes video', async () => ((await videoStats(shop))?.frames || 0) > 30, 20000);
  await shop.waitForSelector('vitrine-player .card:not([hidden]) .buy', { timeout: 10000 });
  await shop.click('vitrine-player .card .buy');
  const answer = await shop.waitForSelector('vitrine-player .card .answer[data-outcome]', { timeout: 10000 });
  assert.equal(await answer.getAttribute('data-outcome'), 'reserved');
  const orders = await (await fetch(`${server.base}/api/v1/streams/demo/orders`, { headers: { Authorization: `Bearer ${KEY}` } })).json();
  assert.equal(orders.orders[0].shopper_id, 'cust-e2e-7');
  assert.equal(orders.orders[0].viewer_id, 'shopper:cust-e2e-7');
  // The stranger still has no picture.
  assert.notEqual(await stranger.evaluate(() => document.querySelector('vitrine-player').pc?.connectionState), 'connected');
  assert.equal((await videoStats(stranger))?.frames || 0, 0);
});
