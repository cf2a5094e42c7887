// The creator studio: sign in with the stream key, go live over WHIP from
// the camera or the screen, and run the show: cards, flash sales, the
// run-of-show, with live figures, and the chat. A moderator (signed in
// with a moderator key) gets the chat panels only.
import { iceGathered, price } from '/sdk/vitrine-player.js';
import { onEvent as chatEvent, startChat } from '/static/studio-chat.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let stream = params.get('stream') || sessionStorage.getItem('vitrine-stream') || 'demo';
let key = sessionStorage.getItem('vitrine-key') || '';
let role = sessionStorage.getItem('vitrine-role') || 'host';
$('stream').value = stream;
if (params.get('role') === 'moderator') $('key-label').textContent = 'Moderator key';

let pc = null;
let media = null;
let sessionURL = null;
let lastBytes = null;
let overlay = { card: null, sale: null };

// Simulcast: the camera goes out as three layers (RFC 8853 rids, high to
// low, as the server expects them) and each viewer is sent the one its
// network carries. On by default; the choice is kept in this browser.
const layers = [
  { rid: 'h', maxBitrate: 2_500_000 },
  { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 800_000 },
  { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 250_000 },
];
$('simulcast').checked = localStorage.getItem('vitrine-simulcast') !== '0';
$('simulcast').addEventListener('change', () => localStorage.setItem('vitrine-simulcast', $('simulcast').checked ? '1' : '0'));

function setState(state, text) {
  $('state').dataset.state = state;
  $('state').textContent = text;
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${key}`, ...(opts.body ? { 'Content-Type': 'application/json' } : {}) };
  const res = await fetch(path, { ...opts, headers });
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(body && body.error ? body.error.message : `HTTP ${res.status}`);
  return body;
}

// Sign in: the key is checked against the stream's chat, which the stream
// key, the admin token and a moderator key may all read; its answer says
// which one it is.
$('signin').addEventListener('submit', async (e) => {
  e.preventDefault();
  stream = $('stream').value.trim();
  key = $('key').value.trim();
  try {
    role = (await api(`/api/v1/streams/${encodeURIComponent(stream)}/chat`)).role || 'host';
  } catch (err) {
    $('signin-error').textContent = err.message;
    return;
  }
  sessionStorage.setItem('vitrine-stream', stream);
  sessionStorage.setItem('vitrine-key', key);
  sessionStorage.setItem('vitrine-role', role);
  openDesk();
});

function openDesk() {
  $('signin').hidden = true;
  $('desk').hidden = false;
  $('who').textContent = role === 'moderator' ? `· ${stream} · moderator` : `· ${stream}`;
  document.body.dataset.role = role;
  startChat({ stream, api, role });
  if (role === 'moderator') {
    // A moderator key cannot go live, show cards or read orders.
    for (const panel of $('desk').children) panel.hidden = !panel.hasAttribute('data-chat');
    followOverlay();
    return;
  }
  $('viewerpreview').setAttribute('stream', stream);
  $('h-whip').textContent = `${location.origin}/whip/${stream}`;
  $('h-rtmp').textContent = `rtmp://${location.hostname}:1935/live`;
  loadProducts();
  followOverlay();
  loadRunOfShow();
  setInterval(updateFigures, 2000);
  // A reload while live goes live again by itself.
  if (sessionStorage.getItem('vitrine-live') === '1') goLive();
}

const refusals = {
  401: 'Enter the stream key.',
  403: 'Wrong stream key for this stream.',
  404: 'No stream with this name.',
};

async function goLive() {
  $('golive').disabled = true;
  $('simulcast').disabled = true;
  setState('connecting', 'Connecting…');
  try {
    media = $('source').value === 'screen'
      ? await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true })
      : await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: true });
  } catch (err) {
    setState('error', `Camera or microphone not available (${err.name}). Allow access in the browser and press Go live again.`);
    $('golive').disabled = false;
    $('simulcast').disabled = false;
    return;
  }
  $('preview').srcObject = media;
  // A session of ours that dropped (page reload) is replaced once the
  // server sees it silent: retry 409 for a few seconds.
  for (let attempt = 0; ; attempt++) {
    const res = await publish();
    if (res === 'ok') return;
    if (res !== 409) break;
    if (attempt === 7) {
      setState('error', 'This stream is already live from another session (another tab, OBS?). End it there, then press Go live.');
      break;
    }
    setState('reconnecting', 'Reconnecting to your stream…');
    await new Promise((r) => setTimeout(r, 1000));
  }
  if (!sessionURL) stop(false);
}

async function publish() {
  pc = new RTCPeerConnection();
  for (const track of media.getTracks()) {
    if (track.kind === 'video') addVideo(pc, track);
    else pc.addTransceiver(track, { direction: 'sendonly' });
  }
  const mine = pc;
  pc.onconnectionstatechange = () => {
    if (pc !== mine) return;
    const s = pc.connectionState;
    if (s === 'connected') setState('live', 'Live.');
    if (s === 'disconnected') setState('reconnecting', 'Connection unstable: reconnecting…');
    if (s === 'failed') { setState('error', 'Connection lost. Press Go live again.'); stop(false); }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const res = await fetch(`/whip/${encodeURIComponent(stream)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key}` },
    body: pc.localDescription.sdp,
  });
  if (res.status !== 201) {
    pc.close();
    pc = null;
    if (res.status === 409) return 409;
    let msg = refusals[res.status];
    if (!msg) { try { msg = (await res.json()).error.message; } catch { msg = `Error ${res.status}`; } }
    setState('error', msg);
    return res.status;
  }
  sessionURL = new URL(res.headers.get('Location'), location.href).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  sessionStorage.setItem('vitrine-live', '1');
  $('end').disabled = false;
  return 'ok';
}

// addVideo sends the video as simulcast layers when that is on. A browser
// that refuses the encodings gets one layer, as without simulcast; one whose
// answer has no simulcast (an older server) sends its first encoding only.
// The layers are the same whichever codec the server asks for (H.264 by
// default, VP8). Chromium drops layers for small pictures, so the camera is
// asked for 1280x720 (l is then 320x180).
function addVideo(peer, track) {
  if ($('simulcast').checked) {
    try {
      peer.addTransceiver(track, { direction: 'sendonly', sendEncodings: layers.map((l) => ({ ...l })) });
      return;
    } catch (err) {
      console.warn('studio: simulcast refused, sending one layer:', err);
    }
  }
  peer.addTransceiver(track, { direction: 'sendonly' });
}

function stop(sendDelete = true) {
  if (sendDelete && sessionURL) fetch(sessionURL, { method: 'DELETE', keepalive: true }).catch(() => {});
  sessionURL = null;
  sessionStorage.removeItem('vitrine-live');
  if (pc) { pc.close(); pc = null; }
  if (media) { media.getTracks().forEach((t) => t.stop()); media = null; }
  $('golive').disabled = false;
  $('simulcast').disabled = false;
  $('end').disabled = true;
}

$('golive').addEventListener('click', goLive);
$('end').addEventListener('click', () => { stop(); setState('ended', 'Stream ended.'); });

// updateHealth shows how the stream arrives at the server and, in plain
// words, what to change when something is off.
async function updateHealth() {
  let h;
  try { h = await api(`/api/v1/streams/${encodeURIComponent(stream)}/health`); } catch { return; }
  const live = h.state === 'live' && h.measured;
  $('h-video').textContent = live ? `${h.video.codec}${h.video.profile ? ` ${h.video.profile}` : ''} · ${Math.round(h.video.bitrate_bps / 1000)} kbps` : '–';
  const sent = (h.video.layers || []).filter((l) => l.bitrate_bps > 0);
  $('h-layers').textContent = live && sent.length > 1
    ? `${sent.length}: ${sent.map((l) => Math.round(l.bitrate_bps / 1000)).join(' / ')} kbps` : (live ? '1' : '–');
  $('h-fps').textContent = live ? `${Math.round(h.video.fps)} fps` : '–';
  $('h-key').textContent = h.video.keyframes_on_request ? 'on request'
    : (live && h.video.keyframe_interval_s ? `every ${h.video.keyframe_interval_s.toFixed(1)} s` : '–');
  if (h.state === 'live' && !h.measured) $('h-video').textContent = 'measuring…';
  $('h-bframes').textContent = live ? (h.video.bframes ? 'yes (re-encoded)' : 'no') : '–';
  $('h-audio').textContent = live ? (h.audio.present ? `${h.audio.codec} · ${Math.round(h.audio.bitrate_bps / 1000)} kbps` : 'none') : '–';
  $('h-link').textContent = h.link ? `${h.link.loss_percent.toFixed(1)} % loss${h.link.rtt_ms ? ` · ${Math.round(h.link.rtt_ms)} ms` : ''}` : (h.ingest || '–');
  const list = $('warnings');
  list.innerHTML = '';
  for (const w of h.warnings) {
    const li = document.createElement('li');
    li.dataset.code = w.code;
    const msg = document.createElement('strong');
    msg.textContent = w.message;
    li.append(msg, ' ', w.fix);
    list.append(li);
  }
  if (live && h.warnings.length === 0 && h.video.bitrate_bps > 0) {
    const li = document.createElement('li');
    li.className = 'ok';
    li.textContent = 'All good: viewers get your stream as you send it.';
    list.append(li);
  }
}

async function updateFigures() {
  updateHealth();
  try {
    const s = await (await fetch(`/api/v1/streams/${encodeURIComponent(stream)}`)).json();
    $('f-viewers').textContent = s.viewers;
    const o = await api(`/api/v1/streams/${encodeURIComponent(stream)}/orders`);
    $('f-orders').textContent = o.stats.reserved + o.stats.confirmed;
    const rev = Object.entries(o.stats.revenue_minor || {}).map(([cur, v]) => price(v, cur)).join(' + ');
    $('f-revenue').textContent = rev || '–';
  } catch { /* the next tick retries */ }
  if (!pc) return;
  const stats = await pc.getStats();
  let bytes = 0; let lost = null;
  stats.forEach((r) => {
    if (r.type === 'outbound-rtp') bytes += r.bytesSent;
    if (r.type === 'remote-inbound-rtp' && r.kind === 'video') lost = r.fractionLost;
  });
  const now = performance.now();
  if (lastBytes) $('f-bitrate').textContent = `${Math.round(((bytes - lastBytes.bytes) * 8) / (now - lastBytes.at))} kbps`;
  lastBytes = { bytes, at: now };
  if (lost != null) $('f-loss').textContent = `${(lost * 100).toFixed(1)} %`;
}

async function loadProducts() {
  const { products } = await (await fetch('/api/v1/products')).json();
  const list = $('products');
  list.innerHTML = '';
  for (const p of products) {
    const li = document.createElement('li');
    li.dataset.sku = p.sku;
    li.innerHTML = `<img alt=""><div><div class="t"></div><div class="m"></div></div>
      <div class="actions"><button type="button" class="show">Show now</button>
      <label>Sale price<input type="number" class="sp" min="0" step="0.01"></label>
      <label>Units<input type="number" class="su" min="1" value="10"></label>
      <label>Seconds<input type="number" class="sd" min="1" value="60"></label>
      <button type="button" class="sale secondary">Flash sale</button></div>`;
    li.querySelector('img').src = p.image_url || '';
    li.querySelector('.t').textContent = p.title;
    li.querySelector('.m').textContent = `${price(p.price_minor, p.currency)} · ${p.stock} in stock`;
    const digits = new Intl.NumberFormat('en', { style: 'currency', currency: p.currency }).resolvedOptions().maximumFractionDigits;
    li.querySelector('.sp').value = ((p.price_minor * 0.7) / 10 ** digits).toFixed(digits);
    li.querySelector('.show').addEventListener('click', () => cue({ type: 'card.show', sku: p.sku }));
    li.querySelector('.sale').addEventListener('click', () => cue({
      type: 'sale.start', sku: p.sku,
      price_minor: Math.round(Number(li.querySelector('.sp').value) * 10 ** digits),
      units: Number(li.querySelector('.su').value),
      duration_s: Number(li.querySelector('.sd').value),
    }));
    list.append(li);
  }
}

// cue sends the click's time: the server maps it through this browser's
// Sender Reports onto the frame the creator was showing.
async function cue(body) {
  try {
    await api(`/api/v1/streams/${encodeURIComponent(stream)}/cues`, { method: 'POST', body: JSON.stringify({ ...body, click_time_ms: Date.now() }) });
  } catch (err) {
    $('onscreen').textContent = `Could not send: ${err.message}`;
  }
}
$('hide').addEventListener('click', () => cue({ type: 'card.hide' }));
$('endsale').addEventListener('click', () => cue({ type: 'sale.end' }));

// followOverlay mirrors what viewers have on screen, from the SSE stream.
function followOverlay() {
  const es = new EventSource(`/api/v1/streams/${encodeURIComponent(stream)}/events`);
  es.onmessage = (e) => {
    const m = JSON.parse(e.data);
    chatEvent(m);
    if (m.type === 'snapshot') overlay = { card: m.card || null, sale: m.sale ? { ...m.sale, endsAt: Date.now() + m.sale.ms_left } : null };
    if (m.type === 'card.show') overlay.card = m.card;
    if (m.type === 'card.hide') overlay.card = null;
    if (m.type === 'sale.start') { overlay.card = m.card; overlay.sale = { ...m.sale, endsAt: Date.now() + m.sale.ms_left }; }
    if (m.type === 'sale.end') { overlay.sale = null; if (m.card) overlay.card = m.card; }
    if (m.type === 'stock') for (const s of m.stock) if (overlay.sale && s.units_left != null && overlay.sale.sku === s.sku) overlay.sale.units_left = s.units_left;
    renderOnscreen();
  };
  setInterval(renderOnscreen, 1000);
}

function renderOnscreen() {
  const c = overlay.card;
  if (!c) { $('onscreen').textContent = 'No card.'; return; }
  let text = `${c.title} at ${price(c.price_minor, c.currency)}`;
  const s = overlay.sale;
  if (s) {
    const left = Math.max(0, Math.round((s.endsAt - Date.now()) / 1000));
    text += ` · flash sale: ${s.units > 0 ? `${s.units_left} of ${s.units} left, ` : ''}${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} to go`;
  }
  $('onscreen').textContent = text;
}

// The run-of-show the server keeps (it survives a restart of the server or
// a reload of this page), with how far it got.
async function loadRunOfShow() {
  try {
    const r = await api(`/api/v1/streams/${encodeURIComponent(stream)}/run-of-show`);
    if (!r.cues?.length) return;
    $('ros').value = JSON.stringify(r.cues, null, 1);
    $('ros-state').textContent = r.running ? `Running: ${r.fired} of ${r.cues.length} cues fired.` : `Loaded: ${r.cues.length} cues, ${r.fired} fired, stopped.`;
  } catch (err) {
    $('ros-state').textContent = `Run-of-show not loaded: ${err.message}`;
  }
}

$('ros-start').addEventListener('click', async () => {
  try {
    const cues = JSON.parse($('ros').value);
    await api(`/api/v1/streams/${encodeURIComponent(stream)}/run-of-show`, { method: 'PUT', body: JSON.stringify({ cues }) });
    await api(`/api/v1/streams/${encodeURIComponent(stream)}/run-of-show/start`, { method: 'POST' });
    $('ros-state').textContent = `Running: ${cues.length} cues.`;
  } catch (err) {
    $('ros-state').textContent = `Not started: ${err.message}`;
  }
});
$('ros-stop').addEventListener('click', async () => {
  await api(`/api/v1/streams/${encodeURIComponent(stream)}/run-of-show/stop`, { method: 'POST' }).catch(() => {});
  $('ros-state').textContent = 'Stopped.';
});

// For scripts and tests: the live peer connection.
window.vitrineStudio = { get pc() { return pc; } };

if (key) { $('key').value = key; openDesk(); }
import('/sdk/vitrine-player.js');
