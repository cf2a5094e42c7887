// Frame accuracy: a publishing page draws a frame counter into the video it
// sends; the viewer reads the counter off the frame the card appears on and
// compares it with the counter on screen when Show now was clicked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { KEY, launch, startServer, waitFor } from './harness.js';

let server;
let browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

// Both pages share this: the counter is 12 bits, one 40x40 block per bit
// across the top of a 640x360 frame, white for 1, black for 0.
const BITS = 12;

test('cards land on the clicked frame', async (t) => {
  const pub = await (await browser.newContext()).newPage();
  await pub.goto(`${server.base}/healthz`);
  await pub.evaluate(async ({ key, bits }) => {
    const canvas = document.createElement('canvas');
    canvas.width = 640; canvas.height = 360;
    document.body.append(canvas);
    const g = canvas.getContext('2d');
    window.counter = 0;
    setInterval(() => {
      window.counter++;
      g.fillStyle = '#808080'; g.fillRect(0, 0, 640, 360);
      for (let b = 0; b < bits; b++) {
        g.fillStyle = (window.counter >> b) & 1 ? '#fff' : '#000';
        g.fillRect(b * 48 + 20, 20, 40, 40);
      }
    }, 1000 / 30);
    const pc = new RTCPeerConnection();
    pc.addTransceiver(canvas.captureStream(30).getVideoTracks()[0], { direction: 'sendonly' });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 2000); });
    const res = await fetch('/whip/demo', { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key}` }, body: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    window.pc = pc;
  }, { key: KEY, bits: BITS });

  const viewer = await (await browser.newContext()).newPage();
  await viewer.goto(`${server.base}/watch/demo`);
  await viewer.evaluate((bits) => {
    window.shown = {};
    const canvas = document.createElement('canvas');
    canvas.width = 640; canvas.height = 360;
    const g = canvas.getContext('2d', { willReadFrequently: true });
    const player = document.querySelector('vitrine-player');
    player.addEventListener('vitrine-card', (e) => {
      // Fired in the callback of the frame the card appears on.
      g.drawImage(player.video, 0, 0, 640, 360);
      let n = 0;
      for (let b = 0; b < bits; b++) {
        const px = g.getImageData(b * 48 + 40, 40, 1, 1).data;
        if (px[0] > 128) n |= 1 << b;
      }
      window.shown[e.detail.id] = n;
    });
  }, BITS);
  await waitFor('viewer playing', () => viewer.evaluate(() => document.querySelector('vitrine-player').video.currentTime > 1), 20000);
  // Sender Reports come every second or so: give the mapping time to exist.
  await new Promise((r) => setTimeout(r, 3000));

  const skus = ['demo-mug', 'demo-headphones'];
  const clicks = [];
  for (let i = 0; i < 20; i++) {
    const { counter, now } = await pub.evaluate(() => ({ counter: window.counter, now: Date.now() }));
    const res = await fetch(`${server.base}/api/v1/streams/demo/cues`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ type: 'card.show', sku: skus[i % 2], click_time_ms: now }),
    });
    const cue = await res.json();
    assert.equal(cue.at_source, 'click', 'the click time maps through the creator\'s Sender Reports');
    clicks.push({ id: cue.id, counter });
    await new Promise((r) => setTimeout(r, 600));
  }
  const shown = await waitFor('every card seen', async () => {
    const s = await viewer.evaluate(() => window.shown);
    return clicks.every((c) => s[c.id] !== undefined) ? s : null;
  }, 10000);
  const deltas = clicks.map((c) => shown[c.id] - c.counter);
  const histogram = {};
  for (const d of deltas) histogram[d] = (histogram[d] || 0) + 1;
  t.diagnostic(`card frame minus clicked frame (frames: count): ${JSON.stringify(histogram)}`);
  const within1 = deltas.filter((d) => Math.abs(d) <= 1).length;
  t.diagnostic(`${within1} of ${deltas.length} within one frame`);
  const sorted = [...deltas].sort((a, b) => a - b);
  assert.ok(Math.abs(sorted[Math.floor(sorted.length / 2)]) <= 2, `median card frame ${sorted[Math.floor(sorted.length / 2)]} frames from the click`);
});
