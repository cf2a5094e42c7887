// Adaptive quality on a real constrained link (issue 15): the studio goes
// live in Chromium with three simulcast layers (960x540 from a noisy test
// pattern, so the encoder really spends its bitrates); one Chromium viewer
// watches from a network namespace whose only way in is a veth pair with a
// tc token bucket (tbf) of 600 kbit/s on the server's side, another watches
// unconstrained. The constrained viewer must get the low layer within 5 s
// of joining, play 30 s with no freeze over 500 ms, and reach the top layer
// within 15 s of its limit being lifted to 5 Mbit/s; the other viewer keeps
// the top layer all along.
//
//   VITRINE_BIN=/tmp/vitrine node --test web/e2e/adaptive.test.js   (as root: it makes the namespace)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KEY, launch, startServer, waitFor } from './harness.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'vitrine-abr-'));
const suffix = `${process.pid % 100000}`;
const ns = `vitrine-abr-${suffix}`;
const hostIf = `vab${suffix}h`;
const nsIf = `vab${suffix}n`;
const third = 100 + (process.pid % 100);
const hostIP = `198.18.${third}.1`;
const nsIP = `198.18.${third}.2`;
const ip = (...args) => execFileSync('ip', args, { stdio: 'pipe' });
const limit = (rate) => execFileSync('tc', ['qdisc', 'replace', 'dev', hostIf, 'root', 'tbf', 'rate', rate, 'burst', '20kb', 'latency', '300ms']);

let server;
let studioBrowser;
let nsBrowser;
let netnsMade = false;

before(async () => {
  // The namespace and its link: the host's own interfaces are not touched.
  ip('netns', 'add', ns);
  netnsMade = true;
  ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf, 'netns', ns);
  ip('addr', 'add', `${hostIP}/30`, 'dev', hostIf);
  ip('link', 'set', hostIf, 'up');
  ip('-n', ns, 'addr', 'add', `${nsIP}/30`, 'dev', nsIf);
  ip('-n', ns, 'link', 'set', nsIf, 'up');
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  limit('600kbit');

  // A camera whose picture is hard to compress: the layers' bitrates are
  // the studio's caps (2.5 Mbit/s, 800 and 250 kbit/s), as with a real scene.
  const y4m = path.join(tmp, 'camera.y4m');
  const r = spawnSync('ffmpeg', ['-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=960x540:rate=30,noise=alls=30:allf=t',
    '-frames:v', '60', '-pix_fmt', 'yuv420p', y4m]);
  assert.equal(r.status, 0, `ffmpeg: ${r.stderr}`);

  server = await startServer({}, { host: hostIP });
  // The camera needs a secure context: the server is not on localhost here.
  studioBrowser = await launch({ extraArgs: [`--use-file-for-fake-video-capture=${y4m}`,
    `--unsafely-treat-insecure-origin-as-secure=${server.base}`] });
  // Chromium inside the namespace: Playwright talks to it over a pipe, which
  // `ip netns exec` passes through.
  const wrapper = path.join(tmp, 'chromium-in-ns');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} /usr/bin/chromium "$@"\n`);
  chmodSync(wrapper, 0o755);
  nsBrowser = await launch({ executablePath: wrapper });
});

after(async () => {
  await nsBrowser?.close();
  await studioBrowser?.close();
  server?.stop();
  if (netnsMade) {
    spawnSync('ip', ['link', 'del', hostIf]);
    spawnSync('ip', ['netns', 'del', ns]);
  }
});

// watch opens the watch page and returns a sampler of its video: frame
// height, frames decoded, freezes, and the longest time without a new
// decoded frame since the sampler started.
async function watch(browser) {
  const page = await (await browser.newContext({ viewport: { width: 960, height: 720 } })).newPage();
  await page.goto(`${server.base}/watch/demo`);
  await page.evaluate(() => {
    window.samples = [];
    setInterval(async () => {
      const p = document.querySelector('vitrine-player');
      if (!p || !p.pc) return;
      (await p.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          window.samples.push({ at: performance.now(), frames: s.framesDecoded || 0, height: s.frameHeight || 0,
            freezes: s.freezeCount || 0, freezeS: s.totalFreezesDuration || 0 });
        }
      });
    }, 100);
  });
  return page;
}

const last = (page) => page.evaluate(() => window.samples.at(-1) || null);

// longestStall is the longest stretch, in ms, with no new frame decoded
// between samples taken from `from` (performance.now() of the page) on.
const longestStall = (page, from) => page.evaluate((from) => {
  let worst = 0;
  let since = null;
  let frames = -1;
  for (const s of window.samples) {
    if (s.at < from) continue;
    if (s.frames !== frames) { frames = s.frames; since = s.at; }
    worst = Math.max(worst, s.at - since);
  }
  return worst;
}, from);

test('a viewer on a 600 kbit/s link gets the low layer, plays, and climbs when the link opens', async (t) => {
  const studio = await (await studioBrowser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  await studio.goto(`${server.base}/studio?stream=demo`);
  await studio.fill('#key', KEY);
  await studio.click('#signin button[type=submit]');
  await studio.click('#golive');
  await studio.waitForSelector('#state[data-state=live]', { timeout: 15000 }).catch(async (err) => {
    throw new Error(`the studio did not go live: ${await studio.textContent('#state')} (${err.message})`);
  });
  const health = async () => (await (await fetch(`${server.base}/api/v1/streams/demo/health`, { headers: { Authorization: `Bearer ${KEY}` } })).json());
  const layers = await waitFor('three layers, the top one over 1.5 Mbit/s', async () => {
    const l = (await health()).video.layers;
    return l.length === 3 && l[0].bitrate_bps > 1.5e6 && l[2].bitrate_bps > 0 ? l : null;
  }, 20000);
  t.diagnostic(`layers (kbit/s): ${layers.map((l) => Math.round(l.bitrate_bps / 1000)).join(' / ')}`);

  const open = await watch(studioBrowser);
  await waitFor('the unconstrained viewer plays 540p', async () => (await last(open))?.height === 540, 10000);

  const weak = await watch(nsBrowser);
  const joined = await weak.evaluate(() => performance.now());
  // The low layer is a quarter of 540 lines (Chromium makes it 134).
  const low = await waitFor('the constrained viewer on the low layer', async () => {
    const s = await last(weak);
    return s && s.height > 0 && s.height < 200 && s.frames > 0 ? s : null;
  }, 5000).catch(async (err) => {
    const seen = await weak.evaluate(() => window.samples.filter((_, i) => i % 5 === 0).map((s) => `${Math.round(s.at)}:${s.height}:${s.frames}`).join(' '));
    const m = (await (await fetch(`${server.base}/metrics`)).text()).split('\n').filter((l) => /^vitrine_(layer|viewer_estimate)/.test(l)).join('\n');
    throw new Error(`${err.message}\nconstrained viewer (ms:lines:frames): ${seen}\n${m}`);
  });
  t.diagnostic(`constrained viewer on the low layer ${Math.round(low.at - joined)} ms after joining`);

  await sleep(30000);
  const after30 = await last(weak);
  const stall = await longestStall(weak, low.at);
  t.diagnostic(`30 s on 600 kbit/s: longest stall ${Math.round(stall)} ms, ${after30.freezes - low.freezes} freezes (${Math.round((after30.freezeS - low.freezeS) * 1000)} ms), ${after30.frames - low.frames} frames, ${after30.height} lines`);
  assert.ok(stall <= 500, `a freeze of ${Math.round(stall)} ms on the constrained link`);
  assert.ok(after30.frames - low.frames > 25 * 30 * 0.8, 'the constrained viewer played under 80% of the frames');

  limit('5mbit');
  const lifted = await weak.evaluate(() => performance.now());
  const top = await waitFor('the viewer reaches the top layer once the link opens', async () => {
    const s = await last(weak);
    return s && s.height === 540 ? s : null;
  }, 30000);
  t.diagnostic(`top layer ${Math.round(top.at - lifted)} ms after the limit was lifted`);

  // The unconstrained viewer stayed on the top layer the whole time.
  const heights = await open.evaluate(() => [...new Set(window.samples.filter((s) => s.frames > 0).map((s) => s.height))]);
  assert.deepEqual(heights, [540], `the unconstrained viewer played ${heights.join(', ')} lines`);
});
