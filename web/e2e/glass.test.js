// Glass-to-glass latency: Chromium publishes 720p H.264 over WHIP, Chromium
// watches on the real watch page (<vitrine-player>, WHEP), both through one
// Vitrine on loopback.
//
// The publishing page draws 30 frames a second (every second animation
// frame) of a panning textured scene with, on top, the time it draws at
// (performance.timeOrigin + performance.now(), in 0.1 ms units modulo 2^24,
// with an 8-bit checksum) as 32 black/white 64x64 blocks, and sends the
// canvas (captureStream(30)) as H.264 at 1280x720. The watch page reads the
// blocks back off every frame in requestVideoFrameCallback and records the
// callback's metadata.
//
// "Glass" on the viewer is metadata.expectedDisplayTime: the compositor's
// estimate of when the frame is visible (what a camera pointed at the screen
// would see). Also printed: the callback's own time (the start of the
// rendering frame, like requestAnimationFrame's: it can precede the video
// frame's arrival, so it is not a display instant), metadata.presentationTime
// (frame handed to the compositor), and receiveTime (last packet of the
// frame received), which splits the path into send side (capture, encode,
// pacing, network, Vitrine) and receive side (jitter buffer, decode,
// render). The two pages run in different renderer processes: the offset
// between their clocks is measured from Node (bracketed reads) and applied.
//
// The publisher is pinned at 720p (degradationPreference
// maintain-resolution) and its bandwidth estimate starts at 2 Mbit/s
// (x-google-start-bitrate in the answer it applies), so the test measures
// the steady state a creator reaches after the estimate has ramped up,
// without waiting for it.
//
// Asserts only what is robust on a busy 2-core machine: H.264 both ways,
// frames arrive, decode and carry readable times, latency is positive and
// under a generous bound. The figures are printed as diagnostics.
//
// GLASS_AUDIO=0 publishes video only (default: video + an Opus tone, as a
// creator does; the viewer then lip-syncs video to audio).
// GLASS_SECONDS sets the measured window (default 10).
// GLASS_JITTER_TARGET=ms sets jitterBufferTarget on the watch page's
// receivers (an experiment for the player; unset: the player's default).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { KEY, launch, startServer, waitFor } from './harness.js';

let server;
let browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

const WITH_AUDIO = process.env.GLASS_AUDIO !== '0';
const WINDOW_MS = Number(process.env.GLASS_SECONDS || 10) * 1000;
const WARMUP_MS = 4000;
const JITTER_TARGET = process.env.GLASS_JITTER_TARGET;

// Both pages share the code layout: two rows of 16 blocks, 64x64 at a pitch
// of 80 px from (8, 8) and (8, 88) in the 1280x720 frame; bits 0-23 carry the
// time, bits 24-31 the checksum.
const CODE = { bits: 32, perRow: 16, size: 64, pitch: 80, x0: 8, y0: 8 };

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

function summary(values) {
  const s = [...values].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 0.5), p95: percentile(s, 0.95), min: s[0], max: s[s.length - 1] };
}

const fmt = (x) => (Number.isFinite(x) ? x.toFixed(1) : String(x));
const line = (name, s) => `${name}: p50 ${fmt(s.p50)} ms, p95 ${fmt(s.p95)} ms (min ${fmt(s.min)}, max ${fmt(s.max)}, n=${s.n})`;

const clock = () => performance.timeOrigin + performance.now();

// clockOffset: how far page b's clock runs ahead of page a's, from the
// tightest of several a-b-a bracketed reads.
async function clockOffset(a, b) {
  let best = { width: Infinity, offset: 0 };
  for (let i = 0; i < 15; i++) {
    const t0 = await a.evaluate(clock);
    const tb = await b.evaluate(clock);
    const t1 = await a.evaluate(clock);
    if (t1 - t0 < best.width) best = { width: t1 - t0, offset: tb - (t0 + t1) / 2 };
  }
  return best;
}

async function publisherStats(page) {
  return page.evaluate(async () => {
    const out = {};
    const stats = await window.pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.video = s;
        out.codec = stats.get(s.codecId)?.mimeType;
      }
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') out.pair = s;
    });
    return out;
  });
}

async function viewerStats(page) {
  return page.evaluate(async () => {
    const out = {};
    const pc = document.querySelector('vitrine-player').pc;
    if (!pc) return out;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        out[s.kind] = s;
        if (s.kind === 'video') out.codec = stats.get(s.codecId)?.mimeType;
      }
    });
    return out;
  });
}

// perFrame: the change of a cumulative per-frame counter over the window, in ms per frame.
const perFrame = (a, b, total, count) => {
  const n = (b[count] ?? 0) - (a[count] ?? 0);
  return n > 0 ? (((b[total] ?? 0) - (a[total] ?? 0)) / n) * 1000 : NaN;
};

test('glass-to-glass: Chromium WHIP 720p H.264 -> Vitrine -> Chromium watch page', { timeout: 60000 }, async (t) => {
  const load = [os.loadavg()];

  const pub = await (await browser.newContext()).newPage();
  await pub.goto(`${server.base}/healthz`);
  await pub.evaluate(async ({ key, code, audio }) => {
    const W = 1280; const H = 720;
    const canvas = document.createElement('canvas');
    canvas.width = W; canvas.height = H;
    document.body.append(canvas);
    const g = canvas.getContext('2d');
    // A textured scene twice as wide as the frame, panned a few pixels per
    // frame: the encoder has motion and detail to code, as with a camera.
    const scene = document.createElement('canvas');
    scene.width = 2 * W; scene.height = H;
    const sg = scene.getContext('2d');
    let seed = 1;
    const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
    sg.fillStyle = '#3a4a5a'; sg.fillRect(0, 0, 2 * W, H);
    for (let i = 0; i < 1500; i++) {
      sg.fillStyle = `hsl(${Math.floor(rnd() * 360)},${40 + Math.floor(rnd() * 50)}%,${25 + Math.floor(rnd() * 50)}%)`;
      sg.fillRect(rnd() * 2 * W, 170 + rnd() * (H - 170), 4 + rnd() * 60, 4 + rnd() * 60);
    }
    sg.font = 'bold 48px sans-serif';
    for (let i = 0; i < 20; i++) { sg.fillStyle = '#fff'; sg.fillText(`Vitrine ${i}`, rnd() * 2 * W, 220 + rnd() * (H - 240)); }

    const band = 8 + 2 * code.pitch;
    let frame = 0;
    // Drawn on every second animation frame (30 of 60 per second): each
    // drawing is a frame for the 30 fps capture, and the page draws no frame
    // the capture would drop.
    let tick = 0;
    const draw = () => {
      requestAnimationFrame(draw);
      if (tick++ % 2) return;
      frame++;
      const pan = (frame * 6) % W;
      g.drawImage(scene, pan, 0, W, H, 0, 0, W, H);
      g.fillStyle = '#808080'; g.fillRect(0, 0, W, band);
      // Stamp last, as close to the capture as a page can get.
      const v = Math.floor((performance.timeOrigin + performance.now()) * 10) % 0x1000000;
      const check = (((v & 255) + ((v >> 8) & 255) + ((v >> 16) & 255)) & 255) ^ 0xa5;
      const word = (v | (check << 24)) >>> 0;
      for (let b = 0; b < code.bits; b++) {
        g.fillStyle = (word >>> b) & 1 ? '#fff' : '#000';
        g.fillRect(code.x0 + (b % code.perRow) * code.pitch, code.y0 + Math.floor(b / code.perRow) * code.pitch, code.size, code.size);
      }
    };
    requestAnimationFrame(draw);

    const pc = new RTCPeerConnection();
    const tr = pc.addTransceiver(canvas.captureStream(30).getVideoTracks()[0], { direction: 'sendonly' });
    const h264 = RTCRtpSender.getCapabilities('video').codecs.filter((c) => /h264/i.test(c.mimeType));
    if (!h264.length) throw new Error('this Chromium cannot send H.264');
    tr.setCodecPreferences(h264);
    // 720p throughout: with Chromium's default (balanced) a canvas starts at
    // a quarter of the size while the bandwidth estimate ramps up from
    // 300 kbit/s, and its QP-based upscaling may never come back to 720p.
    const params = tr.sender.getParameters();
    params.degradationPreference = 'maintain-resolution';
    await tr.sender.setParameters(params);
    if (audio) {
      const ac = new AudioContext();
      const osc = ac.createOscillator();
      const dst = ac.createMediaStreamDestination();
      osc.frequency.value = 440; osc.connect(dst); osc.start();
      pc.addTransceiver(dst.stream.getAudioTracks()[0], { direction: 'sendonly' });
      window.ac = ac;
    }
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 2000); });
    const res = await fetch('/whip/demo', { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key}` }, body: pc.localDescription.sdp });
    if (res.status !== 201) throw new Error(`WHIP ${res.status}: ${await res.text()}`);
    // Start the bandwidth estimate where a creator's settles after a few
    // dozen seconds (720p30 at up to 2.5 Mbit/s, Chromium's cap for 720p)
    // instead of ramping up from 300 kbit/s during the test.
    const sdp = (await res.text()).replace(/^(a=fmtp:\d+ .*packetization-mode=1.*)$/gm, '$1;x-google-start-bitrate=2000;x-google-min-bitrate=1000');
    await pc.setRemoteDescription({ type: 'answer', sdp });
    window.pc = pc;
  }, { key: KEY, code: CODE, audio: WITH_AUDIO });

  const viewer = await (await browser.newContext()).newPage();
  await viewer.goto(`${server.base}/watch/demo`);
  await viewer.evaluate((code) => {
    // The blocks are read off a half-size copy: 32x32 blocks, 8x8 samples.
    const canvas = document.createElement('canvas');
    canvas.width = 640; canvas.height = 360;
    const g = canvas.getContext('2d', { willReadFrequently: true });
    const bandH = Math.ceil((code.y0 + 2 * code.pitch) / 2);
    window.samples = [];
    window.bad = 0;
    window.recording = false;
    const player = document.querySelector('vitrine-player');
    const video = player.video;
    const onFrame = (now, meta) => {
      video.requestVideoFrameCallback(onFrame);
      if (!window.recording) return;
      g.drawImage(video, 0, 0, 640, 360);
      const px = g.getImageData(0, 0, 640, bandH).data;
      let word = 0;
      for (let b = 0; b < code.bits; b++) {
        const cx = Math.round((code.x0 + (b % code.perRow) * code.pitch + code.size / 2) / 2);
        const cy = Math.round((code.y0 + Math.floor(b / code.perRow) * code.pitch + code.size / 2) / 2);
        let sum = 0;
        for (let dy = -4; dy < 4; dy++) for (let dx = -4; dx < 4; dx++) sum += px[((cy + dy) * 640 + cx + dx) * 4 + 1];
        if (sum / 64 > 128) word |= 1 << b;
      }
      word >>>= 0;
      const v = word & 0xffffff;
      const check = (((v & 255) + ((v >> 8) & 255) + ((v >> 16) & 255)) & 255) ^ 0xa5;
      if (check !== word >>> 24) { window.bad++; return; }
      const o = performance.timeOrigin;
      window.samples.push({
        v,
        at: o + performance.now(),
        now: o + now,
        expected: o + meta.expectedDisplayTime,
        presented: o + meta.presentationTime,
        received: meta.receiveTime != null ? o + meta.receiveTime : null,
        captured: meta.captureTime != null ? o + meta.captureTime : null,
        processing: meta.processingDuration,
      });
    };
    video.requestVideoFrameCallback(onFrame);
  }, CODE);

  await waitFor('viewer decoding video', async () => ((await viewerStats(viewer)).video?.framesDecoded ?? 0) > 10, 20000);
  if (JITTER_TARGET !== undefined && JITTER_TARGET !== '') {
    await viewer.evaluate((ms) => {
      for (const r of document.querySelector('vitrine-player').pc.getReceivers()) r.jitterBufferTarget = ms;
    }, Number(JITTER_TARGET));
  }
  // Warm-up: the publisher's bandwidth estimate ramps up, the encoder
  // settles, the jitter buffers adapt.
  await viewer.evaluate(() => { window.recording = true; });
  await new Promise((r) => setTimeout(r, WARMUP_MS));
  await viewer.evaluate(() => { window.samples = []; window.bad = 0; });
  load.push(os.loadavg());

  const v0 = await viewerStats(viewer);
  const p0 = await publisherStats(pub);
  const started = Date.now();
  await new Promise((r) => setTimeout(r, WINDOW_MS / 2));
  load.push(os.loadavg());
  await new Promise((r) => setTimeout(r, WINDOW_MS / 2));
  const secs = (Date.now() - started) / 1000;
  const { samples, bad } = await viewer.evaluate(() => { window.recording = false; return { samples: window.samples, bad: window.bad }; });
  const v1 = await viewerStats(viewer);
  const p1 = await publisherStats(pub);
  const off = await clockOffset(pub, viewer);
  load.push(os.loadavg());

  // Publisher times in the viewer's clock: drawn (publisher clock) + offset.
  // The drawn value is the time modulo 2^24 tenths of a millisecond: the
  // frame was drawn at the latest such instant before it was read.
  const M = 0x1000000;
  const rows = samples.map((s) => {
    const readAt = Math.floor((s.at - off.offset) * 10);
    const back = ((readAt % M) - s.v + M) % M;
    const drawn = (readAt - back) / 10 + off.offset;
    return { ...s, drawn };
  });

  // A frame whose pixels are newer than its metadata (received before it
  // was drawn: the video moved on between the callback and drawImage) is
  // counted and left out of the figures.
  const skewed = rows.filter((r) => r.received != null && r.received < r.drawn).length;
  const good = rows.filter((r) => r.received == null || r.received >= r.drawn);
  const g2g = summary(good.map((r) => r.expected - r.drawn));
  const toCallback = summary(good.map((r) => r.now - r.drawn));
  const toPresented = summary(good.map((r) => r.presented - r.drawn));
  const withRecv = good.filter((r) => r.received != null);
  const sendSide = summary(withRecv.map((r) => r.received - r.drawn));
  const recvSide = summary(withRecv.map((r) => r.expected - r.received));
  const withCapture = good.filter((r) => r.captured != null);
  const captureSkew = summary(withCapture.map((r) => r.captured - r.drawn));
  const processing = summary(good.filter((r) => r.processing != null).map((r) => r.processing * 1000));
  const positive = percentile(good.map((r) => r.expected - r.drawn).sort((a, b) => a - b), 0.05);
  const distinct = new Set(rows.map((r) => r.v)).size;

  const vv0 = v0.video; const vv1 = v1.video;
  const pv0 = p0.video; const pv1 = p1.video;
  const rx = {
    fps: (vv1.framesDecoded - vv0.framesDecoded) / secs,
    jitterBuffer: perFrame(vv0, vv1, 'jitterBufferDelay', 'jitterBufferEmittedCount'),
    jitterTarget: perFrame(vv0, vv1, 'jitterBufferTargetDelay', 'jitterBufferEmittedCount'),
    jitterMinimum: perFrame(vv0, vv1, 'jitterBufferMinimumDelay', 'jitterBufferEmittedCount'),
    processing: perFrame(vv0, vv1, 'totalProcessingDelay', 'framesDecoded'),
    decode: perFrame(vv0, vv1, 'totalDecodeTime', 'framesDecoded'),
    assembly: perFrame(vv0, vv1, 'totalAssemblyTime', 'framesAssembledFromMultiplePackets'),
    interFrame: perFrame(vv0, vv1, 'totalInterFrameDelay', 'framesDecoded'),
    // Smoothness: the spread of the intervals between rendered frames.
    interFrameSd: (() => {
      const n = vv1.framesDecoded - vv0.framesDecoded;
      const mean = (vv1.totalInterFrameDelay - vv0.totalInterFrameDelay) / n;
      const sq = (vv1.totalSquaredInterFrameDelay - vv0.totalSquaredInterFrameDelay) / n;
      return Math.sqrt(Math.max(0, sq - mean * mean)) * 1000;
    })(),
    freezeMs: ((vv1.totalFreezesDuration ?? 0) - (vv0.totalFreezesDuration ?? 0)) * 1000,
    dropped: (vv1.framesDropped ?? 0) - (vv0.framesDropped ?? 0),
    freezes: (vv1.freezeCount ?? 0) - (vv0.freezeCount ?? 0),
    lost: (vv1.packetsLost ?? 0) - (vv0.packetsLost ?? 0),
    nacks: (vv1.nackCount ?? 0) - (vv0.nackCount ?? 0),
    kbps: ((vv1.bytesReceived - vv0.bytesReceived) * 8) / secs / 1000,
    audioJitterBuffer: v1.audio && v0.audio ? perFrame(v0.audio, v1.audio, 'jitterBufferDelay', 'jitterBufferEmittedCount') : NaN,
  };
  const tx = {
    fps: (pv1.framesEncoded - pv0.framesEncoded) / secs,
    encode: perFrame(pv0, pv1, 'totalEncodeTime', 'framesEncoded'),
    pacer: perFrame(pv0, pv1, 'totalPacketSendDelay', 'packetsSent'),
    kbps: ((pv1.bytesSent - pv0.bytesSent) * 8) / secs / 1000,
    packetsPerFrame: (pv1.packetsSent - pv0.packetsSent) / Math.max(1, pv1.framesEncoded - pv0.framesEncoded),
    keyframes: (pv1.keyFramesEncoded ?? 0) - (pv0.keyFramesEncoded ?? 0),
    plis: (pv1.pliCount ?? 0) - (pv0.pliCount ?? 0),
    firs: (pv1.firCount ?? 0) - (pv0.firCount ?? 0),
    nacks: (pv1.nackCount ?? 0) - (pv0.nackCount ?? 0),
  };

  t.diagnostic(`publisher: ${p1.codec} ${pv1.frameWidth}x${pv1.frameHeight} ${fmt(tx.fps)} fps, ${fmt(tx.kbps)} kbit/s (target ${Math.round((pv1.targetBitrate ?? 0) / 1000)}), ${fmt(tx.packetsPerFrame)} packets/frame, ${tx.keyframes} keyframes (PLI ${tx.plis}, FIR ${tx.firs}, NACK ${tx.nacks} from Vitrine), quality limited by ${pv1.qualityLimitationReason}; audio ${WITH_AUDIO ? 'Opus' : 'none'}`);
  if (JITTER_TARGET) t.diagnostic(`viewer receivers' jitterBufferTarget set to ${JITTER_TARGET} ms`);
  t.diagnostic(`viewer: ${v1.codec} ${vv1.frameWidth}x${vv1.frameHeight} ${fmt(rx.fps)} fps decoded, ${fmt(rx.kbps)} kbit/s, dropped ${rx.dropped}, freezes ${rx.freezes}, lost ${rx.lost}, NACKs ${rx.nacks}`);
  t.diagnostic(`samples: ${rows.length} frames read in ${fmt(secs)} s (${distinct} distinct), ${bad} unreadable, ${skewed} with pixels newer than their metadata; clock offset viewer-publisher ${fmt(off.offset)} ms (±${fmt(off.width / 2)})`);
  t.diagnostic(line('GLASS-TO-GLASS (drawn -> expectedDisplayTime)', g2g));
  t.diagnostic(line('  drawn -> frame callback', toCallback));
  t.diagnostic(line('  drawn -> presentationTime', toPresented));
  t.diagnostic(line('  send side: drawn -> receiveTime (capture, encode, pacer, network, Vitrine)', sendSide));
  t.diagnostic(line('  receive side: receiveTime -> expectedDisplayTime (jitter buffer, decode, render)', recvSide));
  t.diagnostic(line('  rVFC processingDuration (decode)', processing));
  if (withCapture.length) t.diagnostic(line('  rVFC captureTime - drawn (sender clock estimate error)', captureSkew));
  t.diagnostic(`publisher getStats per frame: encode ${fmt(tx.encode)} ms, pacer (per packet) ${fmt(tx.pacer)} ms; RTT publisher<->Vitrine ${fmt((p1.pair?.currentRoundTripTime ?? NaN) * 1000)} ms`);
  t.diagnostic(`viewer getStats per frame: jitter buffer ${fmt(rx.jitterBuffer)} ms (target ${fmt(rx.jitterTarget)}, minimum ${fmt(rx.jitterMinimum)}), processing (1st packet -> decoded) ${fmt(rx.processing)} ms, decode ${fmt(rx.decode)} ms, assembly ${fmt(rx.assembly)} ms, inter-frame ${fmt(rx.interFrame)} ms (sd ${fmt(rx.interFrameSd)}), freezes ${rx.freezes} (${fmt(rx.freezeMs)} ms); audio jitter buffer ${fmt(rx.audioJitterBuffer)} ms`);
  t.diagnostic(`load average (1 min) before/warm/mid/after: ${load.map((l) => l[0].toFixed(2)).join(' / ')}; ${os.cpus().length} CPUs`);

  assert.match(p1.codec ?? '', /H264/i, 'the publisher sends H.264');
  assert.match(v1.codec ?? '', /H264/i, 'the viewer receives H.264');
  assert.ok(rows.length >= secs * 10, `${rows.length} frames read in ${fmt(secs)} s, want at least 10 per second`);
  assert.ok(bad <= rows.length * 0.05, `${bad} unreadable frames of ${rows.length + bad}`);
  assert.ok(distinct >= rows.length * 0.9, 'every frame read carries its own time');
  assert.ok(off.width < 50, `clock offset measured within ±${fmt(off.width / 2)} ms`);
  // Not the minimum: a frame's metadata may be a frame behind its pixels.
  assert.ok(positive > 0, `glass-to-glass 5th percentile ${fmt(positive)} ms is positive`);
  assert.ok(g2g.p50 < 500, `glass-to-glass p50 ${fmt(g2g.p50)} ms under a generous 500 ms`);
});
