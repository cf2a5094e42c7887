// Chat in a real Chromium: viewers on the watch page pick names and talk,
// the studio moderates, questions reach the creator under their product,
// reactions float, and the phone layout keeps the video visible. Every
// rule is checked where a viewer meets it: on the page (the data channel)
// and over HTTP (the twins, from node with a Vitrine-Viewer token).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ADMIN, KEY, artifacts, launch, openStudio, startServer, waitFor } from './harness.js';

const docs = path.resolve(import.meta.dirname, '../../docs/img');
const xss = ['<img src=x onerror="window.pwned=1">', '<script>window.pwned=1</script>', '<b>bold</b>'];

let server;
let browser;
before(async () => { server = await startServer(); browser = await launch(); });
after(async () => { await browser?.close(); server?.stop(); });

// Pages must fetch nothing from outside the Vitrine server.
const foreign = [];
function ownRequestsOnly(page) {
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(server.base) && !/^(data|blob):/.test(url)) foreign.push(url);
  });
}

// record runs in a watch page first: every message the player receives,
// with its arrival time.
function record() {
  window.got = [];
  document.addEventListener('vitrine-message', (e) => window.got.push({ t: performance.now(), ...e.detail }));
}

// watcher opens the watch page of stream in a browser context of its own
// (its own viewer token) and waits for the chat's snapshot on the channel.
async function watcher(name, { viewport = { width: 1280, height: 720 }, stream = 'demo' } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.label = name;
  ownRequestsOnly(page);
  page.on('pageerror', (err) => { throw new Error(`${name}: ${err.message}`); });
  await page.addInitScript(record);
  await page.goto(`${server.base}/watch/${stream}`);
  await page.waitForFunction(() => window.got.some((m) => m.type === 'chat.snapshot')
    && document.querySelector('vitrine-player').dc?.readyState === 'open', null, { timeout: 20000 });
  return page;
}

// listed is what a viewer sees in the chat, message by message.
function listed(page) {
  return page.evaluate(() => [...document.querySelector('vitrine-chat').shadowRoot.querySelectorAll('.messages li')].map((li) => ({
    id: li.dataset.id, name: li.querySelector('.name')?.textContent, text: li.querySelector('.text')?.textContent,
    waiting: li.classList.contains('waiting'), rejected: li.classList.contains('rejected'), answered: li.hasAttribute('data-answered'), question: li.hasAttribute('data-question'),
    label: li.textContent,
  })));
}

async function sees(page, text, timeout = 10000) {
  try {
    return await waitFor(`${page.label} sees "${text}"`, async () => (await listed(page)).find((m) => m.text === text), timeout);
  } catch (err) {
    err.message += `; ${page.label} says ${JSON.stringify(await notice(page))}, last errors ${JSON.stringify(await page.evaluate(() => window.got.filter((m) => m.type === 'error').slice(-3)))}`;
    throw err;
  }
}

// seesNot: the message is not on the page, checked after the page had a
// chance to get it (the caller waits for something sent after it first).
async function seesNot(page, pred) {
  const found = (await listed(page)).filter(pred);
  assert.deepEqual(found, [], `${page.label} must not show it`);
}

const notice = (page) => page.evaluate(() => {
  const n = document.querySelector('vitrine-chat').shadowRoot.querySelector('.notice');
  return { text: n.textContent, code: n.dataset.code || '' };
});

async function pickName(page, name) {
  await page.fill('vitrine-chat #name', name);
  await page.click('vitrine-chat .pick button[type=submit]');
}

// say types and sends a message, one per 1.1 s per page at most (the
// server takes 3 at once, then one per second).
async function say(page, text, { question = false } = {}) {
  const wait = (page.lastSaid || 0) + 1100 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  await page.fill('vitrine-chat #text', text);
  if (question) await page.check('vitrine-chat .ask input');
  await page.click('vitrine-chat button.send', { timeout: 5000 });
  page.lastSaid = Date.now();
}

// lastError is the newest chat error that came on the page's channel.
const lastError = (page, code) => waitFor(`${page.label} gets error ${code} on its channel`, () => page.evaluate((c) => window.got.findLast((m) => m.type === 'error' && m.code === c), code), 10000);

// chatOnly opens a page without a data channel in a context of its own:
// the watch page in a browser without WebRTC (noWebRTC), or a page of
// the shop's with a <vitrine-chat> and no player. It waits for the chat's
// snapshot, read from the SSE stream.
async function chatOnly(name, { noWebRTC = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.label = name;
  ownRequestsOnly(page);
  page.whep = 0;
  page.on('request', (req) => { if (req.url().includes('/whep/')) page.whep++; });
  page.on('pageerror', (err) => { throw new Error(`${name}: ${err.message}`); });
  if (noWebRTC) {
    await page.addInitScript(() => { delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection; });
    await page.goto(`${server.base}/watch/demo`);
  } else {
    await page.route(`${server.base}/shop/chat-only`, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title></head><body>
<h1>Our live show</h1><vitrine-chat server="${server.base}" stream="demo" style="height: 480px"></vitrine-chat>
<script type="module" src="${server.base}/sdk/vitrine-chat.js"></script></body></html>` }));
    await page.goto(`${server.base}/shop/chat-only`);
  }
  await page.waitForFunction(() => document.querySelector('vitrine-chat')?.shadowRoot.querySelectorAll('.messages li').length > 0, null, { timeout: 20000 });
  return page;
}

// The studio's live chat, with its actions.
async function studioSees(studio, text, timeout = 10000) {
  return waitFor(`the studio sees "${text}"`, () => studio.evaluate((t) => {
    const li = [...document.querySelectorAll('#chat-live li')].find((l) => l.querySelector('.text')?.textContent === t);
    return li ? li.dataset.id : null;
  }, text), timeout);
}
const studioAct = (studio, id, action) => studio.click(`#chat-live li[data-id="${id}"] button.${action}`);

// A viewer over HTTP only: a name, then posts, reactions and buys with its
// Vitrine-Viewer token.
async function httpViewer(name) {
  const res = await fetch(`${server.base}/api/v1/chat/name`, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name }) });
  const token = res.headers.get('Vitrine-Viewer');
  assert.equal(res.status, 200, `name ${name}: ${await res.clone().text()}`);
  assert.ok(token, 'a new viewer gets its token in the response');
  const call = async (p, body) => {
    const r = await fetch(`${server.base}${p}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Vitrine-Viewer': token }, body: JSON.stringify(body) });
    return { status: r.status, body: await r.json().catch(() => null), retryAfter: Number(r.headers.get('Retry-After')) || 0 };
  };
  let last = 0;
  return {
    token,
    // post keeps to one per 1.1 s, as say does.
    post: async (text, question = false) => {
      const wait = last + 1100 - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      last = Date.now();
      return call('/api/v1/streams/demo/chat', { text, question });
    },
    buy: (sku) => call('/api/v1/streams/demo/buy', { sku, qty: 1, key: `k-${Math.random().toString(36).slice(2)}-${Date.now()}` }),
  };
}

async function moderate(body) {
  const res = await fetch(`${server.base}/api/v1/streams/demo/chat/actions`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  assert.equal(res.status, 200, `${body.action}: ${await res.text()}`);
}

// geometry of the player on a page: the rects of the video element, of
// the picture inside it (object-fit and object-position applied, clipped
// to the element and the viewport), the card, the chat box, the pinned
// message.
function geometry(page) {
  return page.evaluate(() => {
    const rect = (el) => { const r = el.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; };
    const clip = (a, b) => {
      const x = Math.max(a.x, b.x); const y = Math.max(a.y, b.y);
      const w = Math.min(a.x + a.w, b.x + b.w) - x; const h = Math.min(a.y + a.h, b.y + b.h) - y;
      return w > 0 && h > 0 ? { x, y, w, h } : { x, y, w: 0, h: 0 };
    };
    const p = document.querySelector('vitrine-player');
    const v = p.video;
    const el = rect(v);
    const cs = getComputedStyle(v);
    const [px, py] = cs.objectPosition.split(' ').map((s) => parseFloat(s) / 100);
    const scale = cs.objectFit === 'cover' ? Math.max(el.w / v.videoWidth, el.h / v.videoHeight) : Math.min(el.w / v.videoWidth, el.h / v.videoHeight);
    const cw = v.videoWidth * scale; const ch = v.videoHeight * scale;
    const picture = { x: el.x + (el.w - cw) * px, y: el.y + (el.h - ch) * py, w: cw, h: ch };
    const viewport = { x: 0, y: 0, w: innerWidth, h: innerHeight };
    const visible = clip(clip(picture, el), viewport);
    const card = p.shadowRoot.querySelector('.card');
    const cardRect = card.hidden ? null : rect(card);
    const chat = document.querySelector('vitrine-chat');
    return {
      viewport, fit: cs.objectFit, videoWidth: v.videoWidth, videoHeight: v.videoHeight,
      orientation: p.getAttribute('orientation'), layout: p.getAttribute('layout'),
      player: rect(p), video: el, visible, card: cardRect,
      cardOnPicture: cardRect ? clip(cardRect, visible) : null,
      chatBox: chat ? rect(chat.shadowRoot.querySelector('.box')) : null,
      chatShown: chat ? [...chat.shadowRoot.querySelectorAll('.messages li')].filter((li) => { const r = li.getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.bottom <= innerHeight; }).length : 0,
      pinned: p.shadowRoot.querySelector('.pinned').hidden ? null : rect(p.shadowRoot.querySelector('.pinned')),
    };
  });
}
const area = (r) => (r ? r.w * r.h : 0);

test('chat: names, moderation, questions, reactions, phone layout', async (t) => {
  const studioContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const studio = await openStudio(studioContext, server.base);
  ownRequestsOnly(studio);
  studio.on('pageerror', (err) => { throw new Error(`studio: ${err.message}`); });
  await studio.click('#golive');
  await studio.waitForSelector('#state[data-state=live]', { timeout: 15000 });
  // Ada watches on a desktop browser, Bob on a phone.
  const ada = await watcher('Ada');
  const bob = await watcher('Bob', { viewport: { width: 390, height: 844 } });
  let late;
  let adaHello;

  await t.test('(a) both viewers pick names; chat reaches the other viewer and the studio', async () => {
    assert.equal(await ada.isVisible('vitrine-chat .pick'), true, 'a viewer without a name is asked for one');
    assert.equal(await ada.isVisible('vitrine-chat .say'), false);
    await pickName(ada, 'Ada');
    await ada.waitForSelector('vitrine-chat .say', { timeout: 10000 });
    assert.equal(await ada.textContent('vitrine-chat button.me'), 'Ada');
    assert.equal(await ada.evaluate(() => localStorage.getItem('vitrine-chat-name')), 'Ada');
    // Names are unique ignoring case.
    await pickName(bob, 'ADA');
    await bob.waitForFunction(() => document.querySelector('vitrine-chat').shadowRoot.querySelector('.notice').dataset.code === 'name_taken', null, { timeout: 10000 });
    assert.match((await notice(bob)).text, /taken/);
    assert.equal(await bob.isVisible('vitrine-chat .say'), false, 'no message box without a name');
    await pickName(bob, 'Bob');
    await bob.waitForSelector('vitrine-chat .say', { timeout: 10000 });

    await say(ada, 'Hello from Ada');
    const got = await sees(bob, 'Hello from Ada');
    assert.equal(got.name, 'Ada');
    adaHello = await studioSees(studio, 'Hello from Ada');
    await say(bob, 'Hi Ada, Bob here');
    assert.equal((await sees(ada, 'Hi Ada, Bob here')).name, 'Bob');
    await studioSees(studio, 'Hi Ada, Bob here');

    // Without an open data channel the page posts over HTTP, as the same
    // viewer (its token from the welcome).
    await ada.evaluate(() => { const p = document.querySelector('vitrine-player'); p.sendSaved = p.send; p.send = () => false; });
    const posted = ada.waitForResponse((r) => r.url().endsWith('/api/v1/streams/demo/chat') && r.request().method() === 'POST');
    await say(ada, 'Ada over HTTP');
    assert.equal((await posted).status(), 201);
    assert.equal((await sees(bob, 'Ada over HTTP')).name, 'Ada');
    await ada.evaluate(() => { const p = document.querySelector('vitrine-player'); p.send = p.sendSaved; });

    // The first name is free; a change right after is refused in words,
    // and the viewer chats on under the name it has.
    await ada.click('vitrine-chat button.me');
    await pickName(ada, 'Ada Lovelace');
    await ada.waitForFunction(() => document.querySelector('vitrine-chat').shadowRoot.querySelector('.notice').dataset.code === 'name_locked', null, { timeout: 10000 });
    assert.match((await notice(ada)).text, /change your name again in \d+ min/);
    assert.equal(await ada.isVisible('vitrine-chat .say'), true);
    // A reload keeps the name: no picker again.
    await ada.reload();
    await ada.waitForFunction(() => window.got.some((m) => m.type === 'chat.snapshot') && document.querySelector('vitrine-player').dc?.readyState === 'open', null, { timeout: 20000 });
    assert.equal(await ada.isVisible('vitrine-chat .say'), true, 'the name is kept');
    assert.equal(await ada.textContent('vitrine-chat button.me'), 'Ada');
  });

  await t.test('(a2) no data channel: the chat reads the SSE stream and posts over HTTP', async () => {
    const noRTC = await chatOnly('Cleo, no WebRTC', { noWebRTC: true });
    const shop = await chatOnly('Dan, chat without a player');
    for (const page of [noRTC, shop]) {
      assert.equal((await sees(page, 'Hello from Ada')).name, 'Ada', 'the earlier messages, from the snapshot');
      assert.equal(await page.isVisible('vitrine-chat .pick'), true);
    }
    assert.match(await noRTC.textContent('vitrine-player .status'), /cannot play live video/);
    await pickName(noRTC, 'Cleo');
    await pickName(shop, 'Dan');
    for (const page of [noRTC, shop]) await page.waitForSelector('vitrine-chat .say', { timeout: 10000 });
    // What the others say comes in live.
    await say(bob, 'Bob to the SSE readers');
    for (const page of [noRTC, shop]) assert.equal((await sees(page, 'Bob to the SSE readers')).name, 'Bob');
    // What they say reaches the pages on WebRTC, under their names.
    await say(noRTC, 'Cleo without WebRTC');
    await say(shop, 'Dan from the shop page');
    assert.equal((await sees(bob, 'Cleo without WebRTC')).name, 'Cleo');
    assert.equal((await sees(bob, 'Dan from the shop page')).name, 'Dan');
    assert.equal((await sees(shop, 'Cleo without WebRTC')).name, 'Cleo');
    assert.equal((await sees(noRTC, 'Dan from the shop page')).name, 'Dan');
    for (const page of [noRTC, shop]) {
      assert.ok((await listed(page)).some((m) => m.text === (page === shop ? 'Dan from the shop page' : 'Cleo without WebRTC')), `${page.label} sees its own`);
      assert.equal(page.whep, 0, `${page.label} never tried WebRTC`);
    }
    await noRTC.context().close();
    await shop.context().close();
  });

  await t.test('(b) markup in messages shows as text: no element made, no script run', async () => {
    for (const x of xss) await say(ada, x);
    for (const x of xss) {
      const m = await sees(bob, x);
      assert.equal(m.name, 'Ada');
      await studioSees(studio, x);
    }
    for (const x of xss) assert.ok((await listed(ada)).some((m) => m.text === x), `Ada sees her own "${x}"`);
    for (const page of [ada, bob, studio]) {
      const made = await page.evaluate(() => {
        const chat = document.querySelector('vitrine-chat');
        const roots = [document, chat?.shadowRoot].filter(Boolean);
        return roots.flatMap((r) => [...r.querySelectorAll('.messages img, .messages script, .messages b, #chat-live img, #chat-live script, #chat-live b')]).length;
      });
      assert.equal(made, 0, 'no element from a message');
      assert.equal(await page.evaluate(() => window.pwned), undefined, 'no script from a message ran');
    }
  });

  await t.test('(c) the studio deletes a message: gone on both pages and not sent to a late joiner', async () => {
    await say(bob, 'delete me please');
    await sees(ada, 'delete me please');
    const id = await studioSees(studio, 'delete me please');
    await studioAct(studio, id, 'delete');
    for (const page of [ada, bob]) {
      await waitFor(`${page.label}: the deleted message is gone`, async () => !(await listed(page)).some((m) => m.text === 'delete me please'), 10000);
    }
    await studio.waitForFunction((i) => !document.querySelector(`#chat-live li[data-id="${i}"]`), id, { timeout: 10000 });
    late = await watcher('late joiner');
    const seen = await listed(late);
    assert.ok(seen.some((m) => m.text === 'Hello from Ada'), 'the late joiner gets the earlier messages');
    assert.ok(seen.some((m) => m.text === 'Hi Ada, Bob here'));
    for (const x of xss) assert.ok(seen.some((m) => m.text === x));
    assert.equal(seen.filter((m) => m.text === 'delete me please').length, 0, 'but not the deleted one');
    const snapshot = await late.evaluate(() => window.got.find((m) => m.type === 'chat.snapshot'));
    assert.equal(snapshot.messages.filter((m) => m.text === 'delete me please').length, 0, 'nor is it in its snapshot');
    assert.equal(await late.isVisible('vitrine-chat .pick'), true, 'a new viewer picks a name before chatting');
  });

  let node;
  await t.test('(d1) mute: on the channel and over HTTP', async () => {
    node = await httpViewer('Nod');
    const r1 = await node.post('hello from node');
    assert.equal(r1.status, 201, JSON.stringify(r1.body));
    assert.equal(r1.body.status, 'visible');
    await sees(ada, 'hello from node');
    const nodeMsg = await studioSees(studio, 'hello from node');
    // Mute both from the studio's live chat.
    await studioAct(studio, adaHello, 'mute');
    await studioAct(studio, nodeMsg, 'mute');
    await studio.waitForFunction(() => document.querySelectorAll('#restricted li button.unmute').length === 2, null, { timeout: 10000 });
    await say(ada, 'am I muted?');
    const err = await lastError(ada, 'muted');
    assert.ok(err.retry_after_ms > 8 * 60000 && err.retry_after_ms <= 10 * 60000, `muted for ${err.retry_after_ms} ms`);
    await ada.waitForFunction(() => /muted for 10 min/.test(document.querySelector('vitrine-chat').shadowRoot.querySelector('.notice').textContent), null, { timeout: 5000 });
    const r2 = await node.post('muted from node');
    assert.equal(r2.status, 429);
    assert.equal(r2.body.error.code, 'muted');
    assert.ok(r2.retryAfter > 8 * 60 && r2.retryAfter <= 600, `Retry-After ${r2.retryAfter}`);
    // Bob chats on; what the muted sent never reached him.
    await say(bob, 'after the mutes');
    await sees(ada, 'after the mutes');
    await seesNot(bob, (m) => m.text === 'am I muted?' || m.text === 'muted from node');
    // Unmute both from the studio: they chat again.
    for (const left of [1, 0]) {
      await studio.click('#restricted li button.unmute');
      await studio.waitForFunction((n) => document.querySelectorAll('#restricted li').length === n, left, { timeout: 10000 });
    }
    await say(ada, 'unmuted Ada');
    await sees(bob, 'unmuted Ada');
    assert.equal((await node.post('unmuted node')).status, 201);
    await sees(bob, 'unmuted node');
  });

  await t.test('(d2) slow mode: on the channel and over HTTP', async () => {
    await studio.selectOption('#slow', '5');
    await ada.waitForFunction(() => window.got.some((m) => m.type === 'chat.settings' && m.slow_s === 5), null, { timeout: 10000 });
    assert.match((await notice(ada)).text, /one message every 5 s/);
    // Slow mode counts from each viewer's last message, also one sent
    // before it was on: start 5 s after them.
    await new Promise((r) => setTimeout(r, 5200));
    await say(ada, 'slow one');
    await sees(bob, 'slow one');
    await say(ada, 'slow two');
    const err = await lastError(ada, 'slow_mode');
    assert.ok(err.retry_after_ms > 0 && err.retry_after_ms <= 5000, `wait ${err.retry_after_ms} ms`);
    await ada.waitForFunction(() => /^Slow mode: wait \d s/.test(document.querySelector('vitrine-chat').shadowRoot.querySelector('.notice').textContent), null, { timeout: 5000 });
    assert.equal((await node.post('slow http one')).status, 201);
    const r = await node.post('slow http two');
    assert.equal(r.status, 429);
    assert.equal(r.body.error.code, 'slow_mode');
    assert.ok(r.retryAfter >= 1 && r.retryAfter <= 5, `Retry-After ${r.retryAfter}`);
    await sees(bob, 'slow http one');
    await seesNot(bob, (m) => m.text === 'slow two' || m.text === 'slow http two');
    await studio.selectOption('#slow', '0');
    await ada.waitForFunction(() => window.got.some((m) => m.type === 'chat.settings' && m.slow_s === 0), null, { timeout: 10000 });
    assert.equal(await ada.isDisabled('vitrine-chat button.send'), false, 'slow mode off: Send works again at once');
  });

  await t.test('(d3) word filter, mask then hold: on the channel and over HTTP', async () => {
    await studio.fill('#filter', 'badword');
    await studio.selectOption('#filter-mode', 'mask');
    await studio.click('#filter-save');
    await waitFor('the filter is saved', async () => {
      const v = await (await fetch(`${server.base}/api/v1/streams/demo/chat`, { headers: { Authorization: `Bearer ${KEY}` } })).json();
      return v.settings.filter.words.includes('badword') && v.settings.filter.mode === 'mask';
    }, 10000);
    await say(ada, 'this badword here');
    const masked = await waitFor('Bob sees the masked message', async () => (await listed(bob)).find((m) => m.name === 'Ada' && /^this \*+ here$/.test(m.text)), 10000);
    assert.equal(masked.text, 'this ******* here');
    const r = await node.post('badword from node');
    assert.equal(r.status, 201);
    assert.equal(r.body.status, 'visible');
    await waitFor('Bob sees the masked HTTP message', async () => (await listed(bob)).find((m) => m.name === 'Nod' && m.text === '******* from node'), 10000);
    await seesNot(bob, (m) => /badword/.test(m.text));

    await studio.selectOption('#filter-mode', 'hold');
    await studio.click('#filter-save');
    await waitFor('the filter holds', async () => {
      const v = await (await fetch(`${server.base}/api/v1/streams/demo/chat`, { headers: { Authorization: `Bearer ${KEY}` } })).json();
      return v.settings.filter.mode === 'hold';
    }, 10000);
    await say(ada, 'a badword held');
    const mine = await waitFor('Ada sees her held message as waiting', async () => (await listed(ada)).find((m) => m.text === 'a badword held' && m.waiting), 10000);
    assert.match(mine.label, /waiting for approval/);
    const h = await node.post('badword node held');
    assert.equal(h.status, 201);
    assert.equal(h.body.status, 'held');
    await studio.waitForFunction(() => document.querySelectorAll('#held li').length === 2, null, { timeout: 10000 });
    await seesNot(bob, (m) => /held/.test(m.text));
    await studio.click(`#held li[data-id="${mine.id}"] button.approve`);
    await studio.click(`#held li[data-id="${h.body.id}"] button.reject`);
    await studio.waitForFunction(() => document.querySelectorAll('#held li').length === 0, null, { timeout: 10000 });
    const approved = await waitFor('Bob sees the approved message', async () => (await listed(bob)).find((m) => m.id === mine.id), 10000);
    assert.equal(approved.name, 'Ada');
    await waitFor('Ada\'s message is no longer waiting', async () => (await listed(ada)).some((m) => m.id === mine.id && !m.waiting), 10000);
    await say(bob, 'after the held ones');
    await sees(ada, 'after the held ones');
    await seesNot(bob, (m) => m.id === h.body.id);
    await seesNot(ada, (m) => m.id === h.body.id);
    await studio.fill('#filter', '');
    await studio.click('#filter-save');
  });

  await t.test('(d4) calm mode: every viewer message waits for approval', async () => {
    await studio.check('#calm');
    await waitFor('calm is on', async () => (await (await fetch(`${server.base}/api/v1/streams/demo/chat`, { headers: { Authorization: `Bearer ${KEY}` } })).json()).settings.calm, 10000);
    await say(ada, 'calm please');
    const mine = await waitFor('Ada sees hers waiting', async () => (await listed(ada)).find((m) => m.text === 'calm please' && m.waiting), 10000);
    const r = await node.post('calm from node');
    assert.equal(r.status, 201);
    assert.equal(r.body.status, 'held');
    await studio.waitForFunction(() => document.querySelectorAll('#held li').length === 2, null, { timeout: 10000 });
    // The host is not held.
    await studio.fill('#chat-text', 'The host speaks in calm mode');
    await studio.click('#chat-post button[type=submit]');
    const host = await sees(bob, 'The host speaks in calm mode');
    assert.equal(host.name.toLowerCase(), 'host');
    await seesNot(bob, (m) => m.text === 'calm please' || m.text === 'calm from node');
    await studio.click(`#held li[data-id="${mine.id}"] button.approve`);
    await studio.click(`#held li[data-id="${r.body.id}"] button.reject`);
    await sees(bob, 'calm please');
    // Rejected: its author is told; nobody else ever sees it.
    await say(bob, 'Bob gets turned down');
    const held = await waitFor('Bob sees his waiting', async () => (await listed(bob)).find((m) => m.text === 'Bob gets turned down' && m.waiting), 10000);
    await studio.waitForSelector(`#held li[data-id="${held.id}"]`, { timeout: 10000 });
    await studio.click(`#held li[data-id="${held.id}"] button.reject`);
    const no = await waitFor('Bob sees it not approved', async () => (await listed(bob)).find((m) => m.id === held.id && m.rejected), 10000);
    assert.match(no.label, /not approved by the moderators/);
    assert.doesNotMatch(no.label, /waiting/);
    await studio.waitForFunction((i) => !document.querySelector(`#held li[data-id="${i}"]`), held.id, { timeout: 10000 });
    await waitFor('Ada gets the chat.rejected', () => ada.evaluate((i) => window.got.some((m) => m.type === 'chat.rejected' && m.id === i), held.id), 10000);
    await seesNot(ada, (m) => m.id === held.id || m.text === 'Bob gets turned down');
    await waitFor('Bob\'s rejected message fades', async () => !(await listed(bob)).some((m) => m.id === held.id), 15000);
    await studio.uncheck('#calm');
    await waitFor('calm is off', async () => !(await (await fetch(`${server.base}/api/v1/streams/demo/chat`, { headers: { Authorization: `Bearer ${KEY}` } })).json()).settings.calm, 10000);
  });

  await t.test('(d5) ban: out of chat and refused at checkout, on the channel and over HTTP', async () => {
    await studio.click('li[data-sku="demo-mug"] button.show');
    await late.waitForSelector('vitrine-player .card:not([hidden]) .title', { timeout: 10000 });
    await pickName(late, 'Eve');
    await late.waitForSelector('vitrine-chat .say', { timeout: 10000 });
    await say(late, 'I am Eve');
    await sees(ada, 'I am Eve');
    const zed = await httpViewer('Zed');
    assert.equal((await zed.post('zed was here')).status, 201);
    await sees(ada, 'zed was here');
    await studioAct(studio, await studioSees(studio, 'I am Eve'), 'ban');
    await studioAct(studio, await studioSees(studio, 'zed was here'), 'ban');
    // A ban takes the viewer's messages off every screen.
    for (const text of ['I am Eve', 'zed was here']) {
      await waitFor(`Ada no longer sees "${text}"`, async () => !(await listed(ada)).some((m) => m.text === text), 10000);
    }
    await say(late, 'am I still here?');
    await lastError(late, 'banned');
    await late.waitForFunction(() => /removed from this chat/.test(document.querySelector('vitrine-chat').shadowRoot.querySelector('.notice').textContent), null, { timeout: 5000 });
    await late.click('vitrine-player .card button.buy');
    const answer = await late.waitForSelector('vitrine-player .card .answer[data-outcome]', { timeout: 10000 });
    assert.equal(await answer.getAttribute('data-outcome'), 'banned', 'a banned viewer cannot buy');
    const post = await zed.post('zed again');
    assert.equal(post.status, 403);
    assert.equal(post.body.error.code, 'banned');
    const buy = await zed.buy('demo-mug');
    assert.equal(buy.status, 403, JSON.stringify(buy.body));
    assert.equal(buy.body.error.code, 'banned');
    await say(bob, 'after the bans');
    await sees(ada, 'after the bans');
    await seesNot(ada, (m) => m.text === 'am I still here?' || m.text === 'zed again');
    // Ada, not banned, still buys.
    const res = await fetch(`${server.base}/api/v1/streams/demo/chat`, { headers: { Authorization: `Bearer ${KEY}` } });
    assert.equal((await res.json()).banned.length, 2);
  });

  await t.test('(e) a question about the product on screen: queued under it in the studio, answered on the page; a pinned message over the video', async () => {
    assert.equal(await ada.isVisible('vitrine-chat .ask'), true, 'the card is on screen: questions can be about it');
    await say(ada, 'Does it come in blue?', { question: true });
    const q = await sees(bob, 'Does it come in blue?');
    assert.equal(q.question, true, 'shown as a question');
    const row = await studio.waitForSelector('#questions .qgroup[data-sku="demo-mug"] li', { timeout: 10000 });
    assert.match(await row.textContent(), /Does it come in blue\?/);
    assert.match(await studio.textContent('#questions .qgroup[data-sku="demo-mug"] h3'), /mug/i);
    await studio.click(`#questions .qgroup[data-sku="demo-mug"] li[data-id="${q.id}"] button.answer`);
    for (const page of [ada, bob]) {
      await waitFor(`${page.label} sees it answered`, async () => (await listed(page)).some((m) => m.id === q.id && m.answered && /✓/.test(m.label)), 10000);
    }
    await studio.waitForFunction(() => !document.querySelector('#questions .qgroup[data-sku="demo-mug"] li'), null, { timeout: 10000 });

    // Pinned: even markup pinned over the video is text.
    await studioAct(studio, await studioSees(studio, xss[0]), 'pin');
    for (const page of [ada, bob]) {
      await page.waitForFunction((x) => {
        const el = document.querySelector('vitrine-player').shadowRoot.querySelector('.pinned');
        return !el.hidden && el.querySelector('.text').textContent === x;
      }, xss[0], { timeout: 10000 });
      assert.equal(await page.evaluate(() => document.querySelector('vitrine-player').shadowRoot.querySelectorAll('.pinned img, .pinned script, .pinned b').length), 0);
      assert.equal(await page.evaluate(() => window.pwned), undefined);
    }
    await studio.fill('#chat-text', 'Free shipping on every order tonight!');
    await studio.click('#chat-post button[type=submit]');
    await studioAct(studio, await studioSees(studio, 'Free shipping on every order tonight!'), 'pin');
    for (const page of [ada, bob]) {
      await page.waitForFunction(() => document.querySelector('vitrine-player').shadowRoot.querySelector('.pinned .text').textContent === 'Free shipping on every order tonight!', null, { timeout: 10000 });
    }
    const g = await geometry(bob);
    assert.ok(g.pinned && g.pinned.y < g.viewport.h * 0.25, `pinned at the top: ${JSON.stringify(g.pinned)}`);
  });

  await t.test('(h) a moderator key signs in to the chat panels only, and moderates', async () => {
    await studio.click('#modkey');
    await studio.waitForSelector('#modkey-out:not([hidden])', { timeout: 10000 });
    const link = await studio.textContent('#modlink');
    assert.equal(link, `${server.base}/studio?stream=demo&role=moderator`);
    const modKey = await studio.textContent('#modkey-value');
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const mod = await context.newPage();
    ownRequestsOnly(mod);
    mod.on('pageerror', (err) => { throw new Error(`moderator: ${err.message}`); });
    await mod.goto(link);
    assert.equal(await mod.textContent('#key-label'), 'Moderator key');
    await mod.fill('#key', modKey);
    await mod.click('#signin button[type=submit]');
    await mod.waitForSelector('#desk:not([hidden])', { timeout: 10000 });
    assert.match(await mod.textContent('#who'), /moderator/);
    for (const sel of ['section.chat', 'section.moderation']) assert.equal(await mod.isVisible(sel), true, `${sel} shown`);
    for (const sel of ['section.live', 'section.health', '#products', '#ros']) assert.equal(await mod.isVisible(sel), false, `${sel} hidden from a moderator`);
    assert.equal(await mod.isVisible('#modkey-box'), false, 'a moderator cannot make moderator keys');
    await say(bob, 'a moderator removes this');
    const id = await studioSees(mod, 'a moderator removes this');
    await studioAct(mod, id, 'delete');
    await waitFor('Ada: gone', async () => !(await listed(ada)).some((m) => m.text === 'a moderator removes this'), 10000);
    // A moderator posts as moderator.
    await mod.fill('#chat-text', 'Moderator here: be kind');
    await mod.click('#chat-post button[type=submit]');
    const m = await sees(ada, 'Moderator here: be kind');
    assert.match(m.label, /moderator/i);
    await mod.screenshot({ path: path.join(artifacts, 'studio-moderator-phone.png'), fullPage: true });
    await context.close();
  });

  await t.test('(i) the studio\'s moderation log: who did what, newest first', async () => {
    await say(bob, 'log me, then delete me');
    const id = await studioSees(studio, 'log me, then delete me');
    await studioAct(studio, id, 'mute');
    await studio.waitForSelector('#restricted li button.unmute', { timeout: 10000 });
    await studioAct(studio, id, 'delete');
    await studio.click('#restricted li button.unmute');
    const read = () => studio.evaluate(() => [...document.querySelectorAll('#modlog li')].map((li) => ({ by: li.dataset.by, action: li.dataset.action, text: li.textContent })));
    const log = await waitFor('the log shows the unmute on top', async () => { const l = await read(); return l[0]?.action === 'unmute' ? l : null; }, 10000);
    t.diagnostic(`log: ${JSON.stringify(log.slice(0, 4))}`);
    assert.equal(await studio.isVisible('#modlog'), true);
    assert.deepEqual(log.slice(0, 3).map((a) => [a.by, a.action]), [['host', 'unmute'], ['host', 'delete'], ['host', 'mute']]);
    assert.match(log[1].text, /Bob: log me, then delete me/);
    assert.match(log[2].text, /Bob for 10 min/);
    for (const a of log.slice(0, 3)) assert.match(a.text, /^\d\d:\d\d:\d\d/, 'each with its time');
    assert.ok(log.some((a) => a.by === 'moderator' && a.action === 'delete' && /a moderator removes this/.test(a.text)), 'the moderator\'s delete, under moderator');
  });

  await t.test('(f) reactions: taps are counted at most every 250 ms, and float on the other page', async () => {
    const taps = 8;
    const start = await bob.evaluate(() => performance.now());
    for (let i = 0; i < taps; i++) await ada.click('vitrine-chat .reactions button[data-value=heart]');
    // Bob's floats while the counts come in.
    let floats = 0;
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      floats = Math.max(floats, await bob.evaluate(() => document.querySelector('vitrine-player').shadowRoot.querySelectorAll('.floats .float').length));
      await new Promise((r) => setTimeout(r, 50));
    }
    const got = await bob.evaluate((s) => window.got.filter((m) => m.type === 'reactions' && m.t >= s).map((m) => ({ t: m.t, counts: m.counts })), start);
    const sum = got.reduce((n, m) => n + (m.counts.heart || 0), 0);
    const gaps = got.slice(1).map((m, i) => Math.round(m.t - got[i].t));
    t.diagnostic(`${taps} taps: ${got.length} reactions messages, counts ${got.map((m) => m.counts.heart).join('+')}, gaps ${gaps.join(', ')} ms, at most ${floats} floating`);
    assert.equal(sum, taps, 'every tap is counted once');
    assert.ok(got.length >= 1);
    // At most one message per 250 ms: n messages span (n-1) gaps of 250 ms,
    // each allowed 30 ms of delivery jitter.
    const span = got.length > 1 ? got.at(-1).t - got[0].t : 0;
    assert.ok(span >= (got.length - 1) * 220, `${got.length} messages over ${Math.round(span)} ms`);
    assert.ok(gaps.every((g) => g >= 150), `no two counts closer than the server's 250 ms less jitter: ${gaps}`);
    assert.ok(floats >= 1 && floats <= 30, `floating hearts on Bob's screen: ${floats}`);
    // A flood of counts keeps the page's floating nodes bounded.
    const flood = await bob.evaluate(() => {
      const p = document.querySelector('vitrine-player');
      p.onMessage(JSON.stringify({ v: 1, type: 'reactions', counts: { heart: 500, fire: 500, wow: 500 } }));
      p.onMessage(JSON.stringify({ v: 1, type: 'reactions', counts: { clap: 500 } }));
      return p.shadowRoot.querySelectorAll('.floats .float').length;
    });
    assert.equal(flood, 30, 'at most 30 floating at once');
  });

  const floating = (page) => page.evaluate(() => document.querySelector('vitrine-player').shadowRoot.querySelectorAll('.floats .float').length);
  await t.test('(f2) reactions that ride in a chat message float as well', async () => {
    await waitFor('the floats of (f) are gone', async () => (await floating(bob)) === 0, 6000);
    // Counts due at the same tick as chat come in the chat message.
    const direct = await bob.evaluate(() => {
      const p = document.querySelector('vitrine-player');
      p.onMessage(JSON.stringify({ v: 1, type: 'chat', messages: [], reactions: { heart: 3, fire: 1 } }));
      return [...p.shadowRoot.querySelectorAll('.floats .float')].map((el) => el.dataset.value).sort();
    });
    assert.deepEqual(direct, ['fire', 'heart', 'heart', 'heart']);
    // A viewer taps while chatting; Bob floats every tap once, however
    // the counts came (alone or in a chat). The server sends taps after a
    // quiet spell at once, then counts 250 ms after the last ones, and a
    // message 125 ms after its last send: two taps, then two messages at
    // 160 and 190 ms, make the second message wait for the counts' tick.
    // Over HTTP from here, for the timing; a few rounds, until one rides.
    await bob.evaluate(() => {
      window.floated = 0;
      const box = document.querySelector('vitrine-player').shadowRoot.querySelector('.floats');
      new MutationObserver((ms) => { for (const m of ms) for (const n of m.addedNodes) if (n.classList?.contains('float')) window.floated++; }).observe(box, { childList: true });
    });
    const call = (p, body) => fetch(`${server.base}/api/v1/streams/demo/${p}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Vitrine-Viewer': node.token }, body: JSON.stringify(body) });
    const later = (ms, fn) => new Promise((r) => setTimeout(r, ms)).then(fn);
    const start = await bob.evaluate(() => performance.now());
    const counted = () => bob.evaluate((s) => window.got.filter((m) => m.t >= s && ((m.type === 'reactions' && m.counts) || (m.type === 'chat' && m.reactions)))
      .map((m) => ({ type: m.type, heart: (m.counts || m.reactions).heart || 0 })), start);
    const lines = [['Love this mug', 'Want one'], ['So pretty', 'Ordering now'], ['Is it dishwasher safe?', 'Thanks'], ['Great show', 'See you next week']];
    let taps = 0;
    for (const [a, b] of lines) {
      await new Promise((r) => setTimeout(r, 2500)); // counts and the 3-at-once budget are fresh
      const res = await Promise.all([call('reactions', { value: 'heart' }), call('reactions', { value: 'heart' }),
        later(160, () => call('chat', { text: a })), later(190, () => call('chat', { text: b }))]);
      assert.deepEqual(res.map((r) => r.status), [202, 202, 201, 201]);
      taps += 2;
      await sees(bob, b);
      await waitFor('Bob gets the round\'s taps', async () => (await counted()).reduce((n, m) => n + m.heart, 0) >= taps, 3000);
      if ((await counted()).some((m) => m.type === 'chat')) break;
    }
    const got = await counted();
    t.diagnostic(`${taps} taps with chat: ${got.map((m) => `${m.type} ${m.heart}`).join(', ')}`);
    assert.equal(got.reduce((n, m) => n + m.heart, 0), taps, 'every tap counted once');
    assert.ok(got.some((m) => m.type === 'chat'), 'some counts rode in a chat message');
    await waitFor(`Bob floats ${taps}`, () => bob.evaluate((n) => window.floated >= n, taps), 3000);
    assert.equal(await bob.evaluate(() => window.floated), taps, 'one float per tap');
    await waitFor('the floats are gone', async () => (await floating(bob)) === 0, 6000);
  });

  await t.test('(g) phone and desktop layouts: geometry and screenshots', async () => {
    // Bob, on a 390x844 phone, with the card, some chat and the pinned message.
    await bob.waitForFunction(() => document.querySelector('vitrine-player').video.videoWidth > 0, null, { timeout: 10000 });
    await new Promise((r) => setTimeout(r, 2600)); // the floats of (f) are gone
    const g = await geometry(bob);
    t.diagnostic(`phone: ${JSON.stringify({ layout: g.layout, orientation: g.orientation, fit: g.fit, video: g.video, visible: g.visible, card: g.card, chat: g.chatBox })}`);
    assert.equal(g.layout, 'fill');
    assert.equal(g.orientation, 'landscape', 'the demo camera is 16:9');
    assert.ok(g.video.x <= 0.5 && Math.abs(g.video.w - 390) <= 1, 'the video spans the full width');
    assert.ok(Math.abs(g.visible.w - 390) <= 1 && g.visible.y <= 0.5, 'a 16:9 picture is letterboxed at the top, full width');
    assert.ok(g.card, 'the card is shown');
    const covered = area(g.cardOnPicture) / area(g.visible);
    t.diagnostic(`phone 16:9: card covers ${(covered * 100).toFixed(1)} % of the picture (card ${Math.round(area(g.card))} px², picture ${Math.round(area(g.visible))} px²)`);
    assert.ok(covered <= 0.25, `card covers ${covered}`);
    assert.ok(g.card.y + g.card.h <= g.chatBox.y + 1, 'the card sits above the chat');
    const inside = (a, b) => a.x >= b.x - 0.5 && a.y >= b.y - 0.5 && a.x + a.w <= b.x + b.w + 0.5 && a.y + a.h <= b.y + b.h + 0.5;
    assert.ok(inside(g.chatBox, g.player), 'the chat is over the player');
    assert.ok(g.chatBox.x <= 12 && g.chatBox.x + g.chatBox.w <= 390 - 40, 'the chat is on the left');
    assert.ok(g.chatBox.y + g.chatBox.h >= 844 - 24 && g.chatBox.y >= 844 / 2, 'the chat is at the bottom');
    assert.ok(g.chatShown >= 3, `the last messages are on screen (${g.chatShown})`);
    assert.equal(await bob.evaluate(() => getComputedStyle(document.querySelector('vitrine-chat')).backgroundColor), 'rgba(0, 0, 0, 0)', 'the chat floats: no background of its own');
    await bob.screenshot({ path: path.join(docs, 'watch-phone.png') });

    // Ada, on a 1280x800 desktop: the player and the chat beside it.
    await ada.setViewportSize({ width: 1280, height: 800 });
    await ada.waitForFunction(() => document.querySelector('vitrine-player').getAttribute('layout') === 'box');
    const d = await geometry(ada);
    t.diagnostic(`desktop: ${JSON.stringify({ player: d.player, chat: d.chatBox, card: d.card })}`);
    assert.ok(d.chatBox.x >= d.player.x + d.player.w, 'the chat is a column beside the player');
    assert.ok(Math.abs(d.player.w / d.player.h - 16 / 9) < 0.02, 'the player keeps 16:9');
    assert.ok(d.chatBox.h >= d.player.h * 0.9, 'the chat column is as tall as the player');
    assert.ok(d.chatShown >= 5, `messages on screen (${d.chatShown})`);
    await ada.screenshot({ path: path.join(docs, 'watch-desktop.png') });
  });

  await t.test('(g) a 9:16 creator fills a 390x844 phone screen', async () => {
    const res = await fetch(`${server.base}/api/v1/streams`, { method: 'POST', headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ name: 'tall' }) });
    assert.equal(res.status, 201);
    const { key } = await res.json();
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const creator = await context.newPage();
    await creator.addInitScript(portraitCamera);
    await creator.goto(`${server.base}/studio?stream=tall`);
    await creator.fill('#key', key);
    await creator.click('#signin button[type=submit]');
    await creator.waitForSelector('#desk:not([hidden])');
    await creator.click('#golive');
    await creator.waitForSelector('#state[data-state=live]', { timeout: 15000 });
    const phone = await watcher('phone, portrait creator', { viewport: { width: 390, height: 844 }, stream: 'tall' });
    await phone.waitForFunction(() => document.querySelector('vitrine-player').getAttribute('orientation') === 'portrait', null, { timeout: 20000 });
    const cue = await fetch(`${server.base}/api/v1/streams/tall/cues`, { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ type: 'card.show', sku: 'demo-mug' }) });
    assert.equal(cue.status, 201);
    await phone.waitForSelector('vitrine-player .card:not([hidden]) .title', { timeout: 10000 });
    const g = await geometry(phone);
    t.diagnostic(`portrait: ${g.videoWidth}x${g.videoHeight}, fit ${g.fit}, video ${JSON.stringify(g.video)}, visible ${JSON.stringify(g.visible)}`);
    assert.ok(g.videoHeight > g.videoWidth, 'the creator sends portrait');
    assert.equal(g.fit, 'cover');
    assert.deepEqual([g.video.x, g.video.y, g.video.w, g.video.h].map(Math.round), [0, 0, 390, 844], 'the video element is the screen');
    assert.ok(area(g.visible) >= 390 * 844 * 0.999, 'the picture fills the screen');
    const covered = area(g.cardOnPicture) / area(g.visible);
    t.diagnostic(`phone 9:16: card covers ${(covered * 100).toFixed(1)} % of the picture`);
    assert.ok(covered <= 0.25, `card covers ${covered}`);
    await phone.screenshot({ path: path.join(artifacts, 'watch-portrait.png') });
    await creator.click('#end');
    await context.close();
    await phone.context().close();
  });

  await t.test('no page requested anything outside the server', () => {
    assert.deepEqual(foreign, []);
  });

  await late.context().close();
  await studioContext.close();
});

// portraitCamera runs in a studio page: getUserMedia gives a 360x640
// canvas (the fake camera's middle, with a moving bar so frames differ),
// as a phone held upright sends. H.264 only, as counterCamera does.
function portraitCamera() {
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
    canvas.width = 360; canvas.height = 640;
    const g = canvas.getContext('2d');
    let n = 0;
    setInterval(() => {
      n++;
      g.drawImage(video, 460, 0, 360, 720, 0, 0, 360, 640);
      g.fillStyle = '#ff3d6e';
      g.fillRect(0, (n * 4) % 640, 360, 12);
    }, 1000 / 30);
    const out = canvas.captureStream(30);
    for (const tr of cam.getAudioTracks()) out.addTrack(tr);
    return out;
  };
}
