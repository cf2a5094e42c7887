// A creator streaming from OBS with its default x264 settings (high
// profile, B-frames) over RTMP is watched smoothly in Chromium: Vitrine
// re-encodes without B-frames for browsers, and the audio (AAC) is heard as
// Opus.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { KEY, launch, startServer, waitFor } from './harness.js';

let server;
let browser;
let ffmpeg;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { ffmpeg?.kill('SIGKILL'); await browser?.close(); server?.stop(); });

function stats(page) {
  return page.evaluate(async () => {
    const out = {};
    const pc = document.querySelector('vitrine-player').pc;
    if (!pc) return out;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') out[s.kind] = s;
    });
    return out;
  });
}

test('OBS-like RTMP with B-frames plays at full frame rate, in order, with sound', async (t) => {
  // OBS x264 defaults: profile high, 2 B-frames, keyframe every 2 s, CBR
  // 2.5 Mbit/s, AAC.
  ffmpeg = spawn('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=30', '-re', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-t', '40', '-c:v', 'libx264', '-preset', 'ultrafast', '-profile:v', 'high', '-bf', '2', '-g', '60',
    '-b:v', '2500k', '-maxrate', '2500k', '-bufsize', '2500k', '-pix_fmt', 'yuv420p',
    '-c:a', 'aac', '-b:a', '128k', '-f', 'flv', `${server.rtmp}/${KEY}`], { stdio: 'ignore' });
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${server.base}/watch/demo`);
  await waitFor('video decoding', async () => ((await stats(page)).video?.framesDecoded ?? 0) > 30, 30000);
  const before = await stats(page);
  const start = Date.now();
  await new Promise((r) => setTimeout(r, 5000));
  const after = await stats(page);
  const secs = (Date.now() - start) / 1000;
  const fps = (after.video.framesDecoded - before.video.framesDecoded) / secs;
  t.diagnostic(`decoded ${fps.toFixed(1)} fps, ${after.video.frameWidth}x${after.video.frameHeight}; frames dropped ${after.video.framesDropped ?? 0}`);
  assert.ok(fps >= 25, `decoded ${fps.toFixed(1)} fps, want >= 25`);
  // In order: presented frames advance with the decoded ones (a decoder fed
  // B-frames out of order shows nothing or drops them).
  assert.ok((after.video.framesDropped ?? 0) - (before.video.framesDropped ?? 0) < secs * 3, 'few frames dropped');
  const samples = (after.audio?.totalSamplesReceived ?? 0) - (before.audio?.totalSamplesReceived ?? 0);
  const concealed = (after.audio?.concealedSamples ?? 0) - (before.audio?.concealedSamples ?? 0);
  t.diagnostic(`audio: ${after.audio?.codecId}, ${samples} samples in ${secs.toFixed(1)} s, ${concealed} concealed`);
  assert.match(after.audio?.codecId ?? '', /_111_/, 'Opus');
  assert.ok(samples > 48000 * secs * 0.8, 'Opus audio arrives and is decoded');
  // Decoded, not made up: the jitter buffer conceals missing audio.
  assert.ok(concealed < samples * 0.1, `${concealed} of ${samples} samples concealed`);
  const h = await (await fetch(`${server.base}/api/v1/streams/demo/health`, { headers: { Authorization: `Bearer ${KEY}` } })).json();
  assert.equal(h.video.bframes, true, 'the health report says B-frames');
});
