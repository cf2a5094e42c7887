// Test harness: starts a Vitrine binary on loopback with a throwaway data
// directory, and Debian's Chromium through playwright-core.
import { spawn } from 'node:child_process';
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
export async function startServer(env = {}, { host = '127.0.0.1' } = {}) {
  const bin = process.env.VITRINE_BIN;
  if (!bin) throw new Error('VITRINE_BIN must name a built vitrine binary (.ci/test.sh builds it)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vitrine-e2e-'));
  const port = await freePort();
  const rtmpPort = await freePort();
  const cfg = path.join(dir, 'vitrine.yaml');
  // ICE on loopback only: tests send nothing off this machine.
  writeFileSync(cfg, `http: "${host}:${port}"\ndata: "${dir}/data"\nwebrtc:\n  listen_ip: "${host}"\n  udp_port: 0\n  include_loopback: ${host === '127.0.0.1'}\nrtmp:\n  address: "127.0.0.1:${rtmpPort}"\nrtsp:\n  address: ""\nlog:\n  level: warn\n`);
  const proc = spawn(bin, ['-config', cfg], {
    env: { ...process.env, VITRINE_ADMIN_TOKEN: ADMIN, VITRINE_DEMO_KEY: KEY, ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const base = `http://${host}:${port}`;
  const deadline = Date.now() + 20000;
  for (;;) {
    try { if ((await fetch(`${base}/readyz`)).ok) break; } catch { /* not up yet */ }
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error('vitrine did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  return { base, rtmp: `rtmp://127.0.0.1:${rtmpPort}/live`, stop: () => proc.kill('SIGTERM') };
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
