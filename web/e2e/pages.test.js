// The pages people touch, in a real Chromium: a creator goes live from the
// studio, viewers watch and buy, a shop embeds the player.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { KEY, artifacts, launch, startServer, videoStats, waitFor } from './harness.js';

let server;
let browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

async function playing(page, minFrames = 30) {
  let first;
  return waitFor('video frames decoded and increasing', async () => {
    const s = await videoStats(page);
    if (!s || s.frames < 1) return null;
    first ??= s.frames;
    return s.frames >= first + minFrames ? s : null;
  }, 20000);
}

async function openStudio(context) {
  const page = await context.newPage();
  ownRequestsOnly(page);
  await page.goto(`${server.base}/studio?stream=demo`);
  await page.fill('#key', KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#desk:not([hidden])');
  return page;
}

// Pages must fetch nothing from outside the Vitrine server (no CDN fonts,
// scripts or images).
const foreign = [];
function ownRequestsOnly(page) {
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(server.base) && !/^(data|blob):/.test(url)) foreign.push(url);
  });
}

async function watcher(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  ownRequestsOnly(page);
  page.on('pageerror', (err) => { throw new Error(`${name}: ${err.message}`); });
  await page.goto(`${server.base}/watch/demo`);
  return page;
}

test('go live, watch, show a card, sell out a flash sale, embed, reload', async (t) => {
  const studioContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  let studio;
  let viewer;

  await t.test('a viewer who arrives before the creator waits, then plays by itself', async () => {
    viewer = await watcher('early viewer');
    await viewer.waitForFunction(() => document.querySelector('vitrine-player').state === 'waiting');
    studio = await openStudio(studioContext);
    await studio.click('#golive');
    await studio.waitForSelector('#state[data-state=live]', { timeout: 15000 });
    await playing(viewer);
    // The viewer decodes frames of the size the studio sends in its top
    // simulcast layer (Chrome may scale its camera down under load; the
    // server forwards what it gets, and a viewer on loopback gets the top).
    const sizes = await waitFor('viewer frame size equals the studio\'s', async () => {
      const got = await videoStats(viewer);
      const sent = await studio.evaluate(async () => {
        let out = null;
        (await window.vitrineStudio.pc.getStats()).forEach((s) => {
          if (s.type === 'outbound-rtp' && s.kind === 'video' && s.frameWidth && !(out && out.width >= s.frameWidth)) out = { width: s.frameWidth, height: s.frameHeight };
        });
        return out;
      });
      return sent && got.width === sent.width && got.height === sent.height ? { got, sent } : null;
    }, 10000);
    assert.ok(sizes.got.width >= 320, `decoded ${sizes.got.width}x${sizes.got.height}`);
    // The studio's health panel reads the stream as the server receives it.
    await studio.waitForFunction(() => /H264/.test(document.getElementById('h-video').textContent)
      && /fps/.test(document.getElementById('h-fps').textContent), null, { timeout: 15000 });
  });

  await t.test('the creator shows a product; the viewer sees the card', async () => {
    await studio.click('li[data-sku="demo-mug"] button.show');
    const title = await viewer.waitForSelector('vitrine-player .card:not([hidden]) .title', { timeout: 10000 });
    assert.match(await title.textContent(), /mug/i);
    const priceText = await viewer.textContent('vitrine-player .card .price');
    assert.match(priceText, /€|EUR/, 'price formatted in its currency');
    await viewer.screenshot({ path: path.join(artifacts, 'watch-card.png') });
    await studio.waitForFunction(() => /mug/i.test(document.getElementById('onscreen').textContent));
  });

  await t.test('a flash sale of 3 units: three buy, the fourth sees sold out', async () => {
    await studio.fill('li[data-sku="demo-sneakers"] input.su', '3');
    await studio.click('li[data-sku="demo-sneakers"] button.sale');
    const buyers = [];
    for (let i = 0; i < 4; i++) {
      const page = await watcher(`buyer ${i}`);
      await page.waitForSelector('vitrine-player .card:not([hidden]) .sale', { timeout: 15000 });
      buyers.push(page);
    }
    const outcomes = [];
    let reservedPage = null;
    for (const page of buyers) {
      // A sold-out sale shows on the button before anyone clicks (stock
      // updates reach every viewer); otherwise the click's answer says it.
      // Two clicks in a row: a double click must not order twice.
      let outcome = await page.evaluate(() => {
        const b = document.querySelector('vitrine-player').shadowRoot.querySelector('.card button.buy');
        if (b.disabled) return b.textContent === 'Sold out' ? 'sold_out' : 'disabled';
        b.click();
        b.click();
        return null;
      });
      if (outcome === null) {
        const answer = await page.waitForSelector('vitrine-player .card .answer[data-outcome]', { timeout: 10000 });
        outcome = await answer.getAttribute('data-outcome');
      }
      if (outcome === 'reserved') reservedPage ??= page;
      outcomes.push(outcome);
    }
    assert.deepEqual(outcomes.sort(), ['reserved', 'reserved', 'reserved', 'sold_out']);
    await studio.waitForFunction(() => document.getElementById('f-orders').textContent === '3', null, { timeout: 10000 });
    const res = await fetch(`${server.base}/api/v1/streams/demo/orders`, { headers: { Authorization: `Bearer ${KEY}` } });
    const { orders } = await res.json();
    assert.equal(orders.filter((o) => o.sku === 'demo-sneakers').length, 3, 'the store holds 3 orders');
    // One buyer confirms: the reservation becomes an order.
    await reservedPage.click('vitrine-player .card button.confirm');
    await reservedPage.waitForSelector('vitrine-player .card .answer[data-outcome=confirmed]', { timeout: 10000 });
    for (const p of buyers) await p.context().close();
  });

  await t.test('the player embedded in a shop page plays and hands Buy to the shop', async () => {
    // End the sold-out sale, then show a product that is in stock.
    await studio.click('#endsale');
    await studio.waitForFunction(() => !/flash sale/.test(document.getElementById('onscreen').textContent));
    await studio.click('li[data-sku="demo-headphones"] button.show');
    await studio.waitForFunction(() => /headphones/i.test(document.getElementById('onscreen').textContent));
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${server.base}/examples/shop?server=${encodeURIComponent(server.base)}`);
    await playing(page, 10);
    await page.waitForFunction(() => {
      const card = document.querySelector('vitrine-player').shadowRoot.querySelector('.card');
      return !card.hidden && /headphones/i.test(card.textContent) && !card.querySelector('button.buy').disabled;
    }, null, { timeout: 10000 });
    await page.click('vitrine-player .card button.buy');
    await page.waitForFunction(() => document.getElementById('count').textContent === '1');
    assert.match(await page.textContent('#log'), /added to cart/);
    await context.close();
  });

  await t.test('the creator reloads the studio; the viewer plays again within seconds', async () => {
    // A run-of-show half way through: the reloaded studio shows how far it got.
    const ros = `${server.base}/api/v1/streams/demo/run-of-show`;
    const auth = { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' };
    const cues = [{ offset_ms: 0, cue: { type: 'card.show', sku: 'demo-headphones' } }, { offset_ms: 600000, cue: { type: 'card.hide' } }];
    assert.equal((await fetch(ros, { method: 'PUT', headers: auth, body: JSON.stringify({ cues }) })).status, 200);
    assert.equal((await fetch(`${ros}/start`, { method: 'POST', headers: auth })).status, 200);
    const before = (await videoStats(viewer)).frames;
    const reloaded = Date.now();
    await studio.reload();
    await studio.waitForSelector('#state[data-state=live]', { timeout: 20000 });
    await studio.waitForFunction(() => document.getElementById('ros-state').textContent === 'Running: 1 of 2 cues fired.', null, { timeout: 10000 });
    assert.match(await studio.inputValue('#ros'), /card\.hide/);
    await fetch(`${ros}/stop`, { method: 'POST', headers: auth });
    await waitFor('viewer decodes new frames after the reload', async () => {
      const s = await videoStats(viewer);
      return s && s.frames > before + 30;
    }, 20000);
    t.diagnostic(`playback back ${Date.now() - reloaded} ms after the reload`);
  });

  await t.test('no page requested anything outside the server', () => {
    assert.deepEqual(foreign, []);
  });

  await t.test('screenshots for the docs', async () => {
    await studio.screenshot({ path: path.join(artifacts, 'studio-desktop.png'), fullPage: true });
    await studio.waitForFunction(() => /kbps/.test(document.getElementById('h-video').textContent), null, { timeout: 10000 });
    await studio.locator('section.health').screenshot({ path: path.join(artifacts, 'studio-health.png') });
    await viewer.setViewportSize({ width: 1280, height: 800 });
    await viewer.screenshot({ path: path.join(artifacts, 'watch-desktop.png') });
    await viewer.setViewportSize({ width: 390, height: 844 });
    await viewer.screenshot({ path: path.join(artifacts, 'watch-phone.png') });
    await studio.setViewportSize({ width: 390, height: 844 });
    await studio.screenshot({ path: path.join(artifacts, 'studio-phone.png'), fullPage: true });
  });
});
