// Long keyframe intervals: a Chromium viewer who joins an RTMP stream
// between two of the creator's keyframes sees a picture without waiting for
// the next one (past streams.reencode_keyframes_over, 2 s by default, the
// server re-encodes and makes a keyframe when a viewer joins). The test
// measures join-to-first-frame for keyframe intervals of 1, 4 and 10 s, and
// how far behind the viewer who has been watching all along the late joiner
// is right after; it asserts only what the issue asks: the first frame
// shows within the keyframe interval.
//
//   VITRINE_BIN=/tmp/vitrine node --test web/e2e/keyframes.test.js
//   KF_GOPS=10 KF_TRIALS=5 KF_SIZE=1280x720 KF_RATE=2500k (figures)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { KEY, launch, startServer, waitFor } from './harness.js';

const GOPS = (process.env.KF_GOPS || '1,4,10').split(',').map(Number);
const TRIALS = Number(process.env.KF_TRIALS || 1);
const SIZE = process.env.KF_SIZE || '640x360';
const RATE = process.env.KF_RATE || '1000k';

let server;
let browser;
let ffmpeg;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { ffmpeg?.kill('SIGKILL'); await browser?.close(); server?.stop(); });

// Runs in each viewer page before its scripts: records when the player asks
// to join (WHEP request) and when its connection is up, and for every frame
// presented, the wall-clock time, the RTP timestamp and how long the frame
// waited between its arrival and its display.
function instrument() {
  const now = () => performance.timeOrigin + performance.now();
  window.kf = { requested: null, connected: null, frames: [] };
  const fetch0 = window.fetch;
  window.fetch = function (url, opts) {
    if (String(url).includes('/whep/') && opts?.method === 'POST' && window.kf.requested == null) window.kf.requested = now();
    return fetch0.call(this, url, opts);
  };
  const PC = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new PC(...args);
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'connected' && window.kf.connected == null) window.kf.connected = now();
    });
    return pc;
  };
  window.RTCPeerConnection.prototype = PC.prototype;
  const hook = () => {
    const v = document.querySelector('vitrine-player')?.video;
    if (!v) { setTimeout(hook, 5); return; }
    const onFrame = (t, meta) => {
      window.kf.frames.push({ at: performance.timeOrigin + t, ts: meta.rtpTimestamp,
        buf: meta.receiveTime != null ? meta.expectedDisplayTime - meta.receiveTime : null });
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  };
  hook();
}

async function viewer() {
  const page = await (await browser.newContext()).newPage();
  await page.addInitScript(instrument);
  const opened = Date.now();
  await page.goto(`${server.base}/watch/demo`);
  return { page, opened };
}

const frames = (page) => page.evaluate(() => window.kf.frames);

function videoStats(page) {
  return page.evaluate(async () => {
    let out = {};
    (await document.querySelector('vitrine-player').pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') out = s; });
    return out;
  });
}

// Wall time minus media time (ms) of each frame, on a common RTP origin:
// the same frame shown later gives a larger offset.
function offsets(fs, origin) {
  return fs.filter((f) => f.ts != null).map((f) => ({ at: f.at, off: f.at - ((f.ts - origin) | 0) / 90 }));
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const ms = (x) => `${Number.isFinite(x) ? x.toFixed(0) : '?'} ms`;

for (const gop of GOPS) {
  test(`keyframe every ${gop} s: a viewer joining mid-GOP sees a picture within the interval`, async (t) => {
    ffmpeg?.kill('SIGKILL');
    // A hardware encoder's way: no B-frames, a keyframe every gop seconds.
    ffmpeg = spawn('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-nostdin', '-re',
      '-f', 'lavfi', '-i', `testsrc2=size=${SIZE}:rate=30`, '-re', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
      '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-profile:v', 'baseline',
      '-g', String(30 * gop), '-keyint_min', String(30 * gop), '-sc_threshold', '0',
      '-b:v', RATE, '-maxrate', RATE, '-bufsize', RATE, '-pix_fmt', 'yuv420p',
      '-c:a', 'aac', '-b:a', '96k', '-f', 'flv', `${server.rtmp}/${KEY}`], { stdio: 'ignore' });

    // A viewer watching all along, across the switch to the re-encode.
    const ref = await viewer();
    await waitFor('first viewer sees the stream', async () => (await frames(ref.page)).length > 0, (gop + 15) * 1000);
    const first = (await frames(ref.page))[0]; // shortly after one of the creator's keyframes
    const k = Math.max(1, Math.ceil(3 / gop));
    const results = [];
    const phases = [0.5, 0.3, 0.7, 0.4, 0.6];
    for (let trial = 0; trial < TRIALS; trial++) {
      // Halfway between two of the creator's keyframes, at least 3 s in;
      // later trials at other points of the interval.
      const phase = phases[trial % phases.length];
      const base = first.at + k * gop * 1000;
      const m = Math.max(0, Math.ceil((Date.now() - base) / (gop * 1000) - phase));
      await sleep(base + (m + phase) * gop * 1000 - Date.now());
      const late = await viewer();
      await waitFor('late viewer sees a frame', async () => (await frames(late.page)).length > 0, (gop + 10) * 1000);
      const shown = (await frames(late.page))[0].at;
      const { requested, connected } = await late.page.evaluate(() => window.kf);
      const r = { opened: shown - late.opened, requested: shown - requested, connected: shown - connected };
      // Watch both for 3 s, then compare when each shows the same media time.
      await sleep(3000);
      const a = offsets(await frames(ref.page), first.ts);
      const b = offsets(await frames(late.page), first.ts);
      const refOff = median(a.filter((f) => f.at > shown).map((f) => f.off));
      const behind = (from, to) => median(b.filter((f) => f.at >= shown + from && f.at < shown + to).map((f) => f.off)) - refOff;
      r.behind = [behind(0, 500), behind(1000, 1500), behind(2500, 3000)];
      const lf = await frames(late.page);
      r.buffered = median(lf.filter((f) => f.buf != null && f.at < shown + 500).map((f) => f.buf));
      r.fps = lf.filter((f) => f.at >= shown + 1000).length / ((lf[lf.length - 1].at - shown - 1000) / 1000);
      results.push(r);
      t.diagnostic(`GOP ${gop} s, trial ${trial + 1}: first frame ${ms(r.opened)} after opening the page, ${ms(r.requested)} after the WHEP request, ` +
        `${ms(r.connected)} after connecting; behind the viewer watching all along: ${r.behind.map(ms).join(' / ')} (first 0.5 s / after 1 s / after 2.5 s); ` +
        `arrival to display ${ms(r.buffered)} in the first 0.5 s; ${r.fps.toFixed(1)} fps from 1 s on`);
      await late.page.context().close();
      // Within the keyframe interval of asking to join. Up to 2 s
      // (streams.reencode_keyframes_over) the video goes out as sent, and a
      // viewer whose connection comes up just as a keyframe goes by may
      // miss it and wait for the next: at 1 s, only that it shows (above).
      if (gop > 2) {
        assert.ok(r.requested < gop * 1000,
          `first frame ${ms(r.requested)} after asking to join (${ms(r.opened)} after opening the page), keyframe interval ${gop} s`);
      }
    }
    if (TRIALS > 1) {
      t.diagnostic(`GOP ${gop} s, median of ${TRIALS}: first frame ${ms(median(results.map((r) => r.opened)))} after opening the page, ` +
        `${ms(median(results.map((r) => r.requested)))} after the WHEP request, ${ms(median(results.map((r) => r.connected)))} after connecting`);
    }
    const s = await videoStats(ref.page);
    const m = await (await fetch(`${server.base}/metrics`)).text();
    const metric = (name) => Number(m.split('\n').find((l) => l.startsWith(`${name} `))?.split(' ')[1]);
    const transcode = metric('vitrine_video_transcode_seconds_sum{protocol="rtmp"}') / metric('vitrine_video_transcode_seconds_count{protocol="rtmp"}');
    t.diagnostic(`GOP ${gop} s: viewer watching all along: ${s.framesDecoded} frames decoded, ${s.keyFramesDecoded} keyframes, ${s.framesDropped} dropped, ` +
      `${s.freezeCount} freezes (${((s.totalFreezesDuration ?? 0) * 1000).toFixed(0)} ms); re-encode frame in to out ${ms(transcode * 1000)} on average ` +
      `(NaN: not re-encoded); keyframe requests ${metric('vitrine_keyframe_requests_total')}`);
    await ref.page.context().close();
  });
}
