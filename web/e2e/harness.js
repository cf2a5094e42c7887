// Test harness: starts a Vitrine binary on loopback with a throwaway data
// directory, and Debian's Chromium through playwright-core.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const ADMIN = 'e2e-admin-token-0123456789';
export const KEY = 'e2e-demo-key-0123456789abc';
export const artifacts = path.resolve(import.meta.dirname, '../../test-artifacts');
mkdirSync(artifacts, { recursive: true });

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
    srv.on('error', reject);
  });
}

// env adds to the server's environment (configuration by VITRINE_* variables).
// host is the address the server listens on, HTTP and WebRTC (loopback by
// default; a test's own network namespace link for constrained viewers).
// tls {cert, key, name} serves HTTPS with that certificate, and base is
// https://name:port (the browser maps name to host: --host-resolver-rules).
// It returns {base, rtmp, proc, stop(signal = 'SIGTERM')}.
export async function startServer(env = {}, { host = '127.0.0.1', tls } = {}) {
  return spawnVitrine(() => env, host, tls);
}

// spawnVitrine starts one binary; env(base) is its environment, made once
// its address is known (a cluster node advertises its own base URL).
async function spawnVitrine(env, host, tls) {
  const bin = process.env.VITRINE_BIN;
  if (!bin) throw new Error('VITRINE_BIN must name a built vitrine binary (.ci/test.sh builds it)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vitrine-e2e-'));
  const port = await freePort();
  const rtmpPort = await freePort();
  const base = tls ? `https://${tls.name}:${port}` : `http://${host}:${port}`;
  // The test process checks readiness itself, on the address, with the
  // test certificate not checked (its name is the browser's).
  const ready = tls ? `https://${host}:${port}/readyz` : `${base}/readyz`;
  const cfg = path.join(dir, 'vitrine.yaml');
  // ICE on loopback only: tests send nothing off this machine.
  writeFileSync(cfg, `http: "${host}:${port}"\ndata: "${dir}/data"\nwebrtc:\n  listen_ip: "${host}"\n  udp_port: 0\n  include_loopback: ${host === '127.0.0.1'}\nrtmp:\n  address: "127.0.0.1:${rtmpPort}"\nrtsp:\n  address: ""\nlog:\n  level: warn\n${tls ? `tls:\n  cert_file: "${tls.cert}"\n  key_file: "${tls.key}"\n` : ''}`);
  const proc = spawn(bin, ['-config', cfg], {
    env: { ...process.env, VITRINE_ADMIN_TOKEN: ADMIN, VITRINE_DEMO_KEY: KEY, ...env(base) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const deadline = Date.now() + 20000;
  for (;;) {
    try { if ((await fetch(ready)).ok) break; } catch { /* not up yet */ }
    if (Date.now() > deadline || proc.exitCode !== null) { proc.kill('SIGKILL'); throw new Error('vitrine did not start'); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { base, rtmp: `rtmp://127.0.0.1:${rtmpPort}/live`, proc, stop: (signal = 'SIGTERM') => proc.kill(signal) };
}

// exited resolves once proc has exited, SIGKILLing it after ms.
export function exited(proc, ms = 10000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
    proc.once('exit', () => { clearTimeout(timer); resolve(); });
  });
}

export const CLUSTER_SECRET = 'e2e-cluster-secret-0123456789';

// startCluster starts a NATS server (Debian's /usr/sbin/nats-server) and
// nodes vitrine binaries named a, b, c… sharing it and the PostgreSQL of
// VITRINE_TEST_POSTGRES, in a schema of their own (dropped by stop). Each
// node is {id, base, rtmp, proc, stop(signal)}; every one runs the demo
// stream with key KEY. stop() ends what is left, NATS last.
export async function startCluster({ nodes = 3, env = {} } = {}) {
  const dsn = process.env.VITRINE_TEST_POSTGRES;
  if (!dsn) throw new Error('VITRINE_TEST_POSTGRES must name a PostgreSQL DSN (.ci/test.sh starts one)');
  const schema = `e2e_${process.pid}_${Date.now().toString(36)}`;
  psql(dsn, `CREATE SCHEMA ${schema}`);
  const store = new URL(dsn);
  store.searchParams.set('search_path', schema);
  const natsPort = await freePort();
  const nats = spawn('/usr/sbin/nats-server', ['-a', '127.0.0.1', '-p', String(natsPort)], { stdio: 'ignore' });
  const out = { nats, schema, nodes: [] };
  out.stop = async () => {
    for (const n of out.nodes) n.stop('SIGKILL');
    await Promise.all(out.nodes.map((n) => exited(n.proc, 2000)));
    nats.kill('SIGTERM');
    await exited(nats, 2000);
    psql(dsn, `DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  };
  try {
    await waitFor('nats-server listening', () => new Promise((resolve) => {
      const sock = net.connect(natsPort, '127.0.0.1', () => { sock.destroy(); resolve(true); });
      sock.on('error', () => resolve(false));
    }), 10000);
    for (let i = 0; i < nodes; i++) {
      const id = String.fromCharCode(97 + i);
      const node = await spawnVitrine((base) => ({
        VITRINE_STORE: store.href, VITRINE_NATS_URL: `nats://127.0.0.1:${natsPort}`, VITRINE_ADVERTISE_URL: base,
        VITRINE_CLUSTER_SECRET: CLUSTER_SECRET, VITRINE_NODE_ID: id, ...env,
      }), '127.0.0.1');
      out.nodes.push({ id, ...node });
    }
  } catch (err) {
    await out.stop();
    throw err;
  }
  return out;
}

function psql(dsn, sql) {
  execFileSync('psql', [dsn, '-v', 'ON_ERROR_STOP=1', '-qc', sql], {
    stdio: ['ignore', 'ignore', 'inherit'], timeout: 15000,
    env: { ...process.env, PGOPTIONS: '-c client_min_messages=warning' },
  });
}

// executablePath may be a wrapper (one that enters a network namespace);
// extraArgs are added to the flags below.
export function launch({ executablePath = '/usr/bin/chromium', extraArgs = [] } = {}) {
  return chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      // Keep WebRTC on this machine: plain host candidates, loopback allowed.
      '--disable-features=WebRtcHideLocalIpsWithMdns', '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required', ...extraArgs],
  });
}

// videoStats reads the player's inbound video statistics inside a page.
export function videoStats(page, selector = 'vitrine-player') {
  return page.evaluate(async (sel) => {
    const p = document.querySelector(sel);
    if (!p || !p.pc) return null;
    let out = null;
    (await p.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') out = { frames: s.framesDecoded || 0, width: s.frameWidth, height: s.frameHeight };
    });
    return out;
  }, selector);
}

export async function waitFor(what, fn, timeout = 15000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// openStudio opens the studio of stream on base in context and signs in
// with KEY; init, if given, runs in the page first (addInitScript).
export async function openStudio(context, base, { stream = 'demo', init, arg } = {}) {
  const page = await context.newPage();
  if (init) await page.addInitScript(init, arg);
  await page.goto(`${base}/studio?stream=${encodeURIComponent(stream)}`);
  await page.fill('#key', KEY);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#desk:not([hidden])');
  return page;
}

// The frame counter of counterCamera and watchLog: 12 bits, one block per
// bit across the top of the frame, white for 1, black for 0 (accuracy.test.js's
// pattern, at 1280x720: blocks 80 px wide every 96 px; read at 640x360).
export const COUNTER_BITS = 12;

// counterCamera runs in a studio page (addInitScript): the camera (the fake
// one in tests) is drawn into a 1280x720 canvas with a frame counter on top,
// and that canvas, with the microphone, is what getUserMedia gives the
// studio. window.cues lists the cues the studio sent: {id, counter, at_source},
// counter being the frame on screen when it was clicked. Video is offered as
// H.264 only, as join.test.js's creator does (with every codec offered,
// Chromium 148 sends the payload type of the server's answer, which its
// offer numbered otherwise, and the server drops the video).
export function counterCamera(bits) {
  const add = RTCPeerConnection.prototype.addTransceiver;
  RTCPeerConnection.prototype.addTransceiver = function (...args) {
    const tr = add.apply(this, args);
    if (tr.sender.track?.kind === 'video') {
      tr.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs.filter((c) => /h264/i.test(c.mimeType)));
    }
    return tr;
  };
  const devices = navigator.mediaDevices;
  const gum = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const cam = await gum(constraints);
    const video = document.createElement('video');
    video.muted = true;
    video.srcObject = new MediaStream(cam.getVideoTracks());
    await video.play().catch(() => {});
    const canvas = document.createElement('canvas');
    canvas.width = 1280; canvas.height = 720;
    const g = canvas.getContext('2d');
    window.counter = 0;
    setInterval(() => {
      window.counter++;
      g.drawImage(video, 0, 0, 1280, 720);
      for (let b = 0; b < bits; b++) {
        g.fillStyle = (window.counter >> b) & 1 ? '#fff' : '#000';
        g.fillRect(b * 96 + 40, 40, 80, 80);
      }
    }, 1000 / 30);
    const out = canvas.captureStream(30);
    for (const t of cam.getAudioTracks()) out.addTrack(t);
    return out;
  };
  window.cues = [];
  const fetch0 = window.fetch;
  window.fetch = async function (url, opts) {
    const counter = window.counter;
    const res = await fetch0.call(this, url, opts);
    if (String(url).endsWith('/cues') && opts?.method === 'POST' && res.ok) {
      const cue = await res.clone().json();
      window.cues.push({ id: cue.id, counter, at_source: cue.at_source });
    }
    return res;
  };
}

// watchLog runs in a watch page (addInitScript) and logs, for the test to
// read: window.frames, every presented frame {at: wall-clock ms, node: the
// player's node, src: 1, 2… the session (srcObject) it came from}; window.shown, the counter read off the frame each
// card.show appeared on, by cue id; window.messages, the welcome and
// reconnect messages {type, at, ...}. The video element gets a mark, so a
// test can tell it is still the same one (no reload, no new element).
export function watchLog(bits) {
  window.frames = [];
  window.shown = {};
  window.messages = [];
  const canvas = document.createElement('canvas');
  canvas.width = 640; canvas.height = 360;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const wall = () => performance.timeOrigin + performance.now();
  document.addEventListener('vitrine-message', (e) => {
    if (e.detail.type === 'welcome' || e.detail.type === 'reconnect') window.messages.push({ ...e.detail, at: wall() });
  });
  document.addEventListener('vitrine-card', (e) => {
    if (e.detail.type !== 'card.show') return;
    // Fired in the callback of the frame the card appears on.
    g.drawImage(e.target.video, 0, 0, 640, 360);
    let n = 0;
    for (let b = 0; b < bits; b++) if (g.getImageData(b * 48 + 40, 40, 1, 1).data[0] > 128) n |= 1 << b;
    window.shown[e.detail.id] = n;
  });
  const hook = () => {
    const p = document.querySelector('vitrine-player');
    if (!p?.video) { setTimeout(hook, 5); return; }
    p.video.dataset.mark = 'first';
    const srcs = new WeakMap();
    let sessions = 0;
    const onFrame = () => {
      const src = p.video.srcObject;
      if (src && !srcs.has(src)) srcs.set(src, ++sessions);
      window.frames.push({ at: wall(), node: p.node, src: src && srcs.get(src) });
      p.video.requestVideoFrameCallback(onFrame);
    };
    p.video.requestVideoFrameCallback(onFrame);
  };
  hook();
}
