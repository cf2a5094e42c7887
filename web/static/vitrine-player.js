// <vitrine-player server="https://host" stream="demo"> plays a Vitrine stream
// over WHEP with sub-second latency and lays the shop overlay over it: the
// product card appears on the video frame the creator showed it on.
//
// Attributes: server (default: this page's origin), stream (default "demo"),
// quality (auto, high, medium, low: the quality menu's choice; without it,
// the viewer's last choice on this page, else auto), layout (fill: the page
// gives the player the whole screen, as the watch page does on a phone; a
// portrait video then covers it, a landscape one sits at the top, and the
// card is a compact bar at --vitrine-card-bottom).
// shopper-token: a token the shop signed for its signed-in shopper (JWT,
// docs/protocol.md "Shoppers the shop vouches for"): buys then count per
// shopper on every device, and a private stream plays only with one.
// The player sets orientation (portrait or landscape) from the video's size,
// for the page's CSS.
// In a cluster the player follows the nodes: a node's 307 and its
// `reconnect` message move it, and when its node dies it goes to the next
// of the nodes the welcome listed (the server attribute last). `node` is
// the base URL it plays from; buying over HTTP always goes to `server`.
// Events (bubbling, composed):
//   vitrine-state  {state, reason}       waiting, live, reconnecting, ended
//   vitrine-card   {card, sale, rtpTimestamp, type, id}  a card is on screen
//                  (fired in the frame callback of the frame it appears on)
//   vitrine-card-hide {sku}              the card went off screen
//   vitrine-buy    {sku, qty, card}      cancelable: call preventDefault() to
//                                        route Buy into your own cart instead
//   vitrine-order  {order}               an order was confirmed
//   vitrine-quality {quality}            the server took a quality choice
//   vitrine-message {...}                any overlay or chat message, as received
// The chat pinned by the creator shows over the top of the video, and
// reaction counts float up its right side. <vitrine-chat> talks through
// send() (the data channel) and request() (HTTP, as this viewer); in a
// browser without WebRTC the player shows so, and the chat reads the SSE
// stream.
// Style with CSS custom properties: --vitrine-accent, --vitrine-card-bg,
// --vitrine-card-fg, --vitrine-radius, --vitrine-font, --vitrine-aspect,
// --vitrine-card-bottom and --vitrine-card-right (layout fill),
// --vitrine-float-bottom (where reactions start floating from).

const css = `
:host { display: block; position: relative; background: #000; color: #fff; overflow: hidden;
  aspect-ratio: var(--vitrine-aspect, 16 / 9); font: 15px/1.4 var(--vitrine-font, system-ui, sans-serif);
  border-radius: var(--vitrine-radius, 8px); }
video { width: 100%; height: 100%; object-fit: contain; display: block; background: #000; }
.status { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
  text-align: center; padding: 1em; background: rgba(0,0,0,.6); font-size: 1.1em; }
[hidden] { display: none !important; }
button { font: inherit; border: 0; border-radius: 6px; padding: 8px 14px; cursor: pointer;
  background: var(--vitrine-accent, #ff3d6e); color: #fff; }
button:disabled { opacity: .6; cursor: default; }
button:focus-visible { outline: 2px solid #fff; outline-offset: 2px; }
.unmute { position: absolute; left: 12px; top: 12px; }
.quality { position: absolute; right: 12px; top: 12px; display: flex; gap: 6px; align-items: center;
  font-size: 13px; background: rgba(0,0,0,.55); border-radius: 6px; padding: 2px 2px 2px 8px; }
.quality select { font: inherit; color: #fff; background: transparent; border: 0; border-radius: 4px; padding: 4px; cursor: pointer; }
.quality option { background: #222; color: #fff; }
.quality select:focus-visible { outline: 2px solid #fff; outline-offset: 1px; }
.card { position: absolute; right: 12px; bottom: 12px; width: min(300px, calc(100% - 24px));
  background: var(--vitrine-card-bg, rgba(255,255,255,.96)); color: var(--vitrine-card-fg, #111);
  border-radius: var(--vitrine-radius, 8px); padding: 10px; display: grid; gap: 6px;
  grid-template-columns: 64px 1fr; box-shadow: 0 6px 24px rgba(0,0,0,.35); }
.card img { width: 64px; height: 64px; object-fit: contain; border-radius: 6px; background: #f3f3f3; }
.card .title { font-weight: 600; }
.card .price { font-size: 1.15em; font-weight: 700; }
.card .list { text-decoration: line-through; opacity: .6; margin-left: 6px; font-weight: 400; font-size: .85em; }
.card .meta { font-size: .85em; opacity: .8; }
.card .actions { grid-column: 1 / -1; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.card .answer { font-size: .9em; }
.card .sale { color: var(--vitrine-accent, #ff3d6e); font-weight: 700; }
@media (max-width: 480px) { .card { grid-template-columns: 48px 1fr; font-size: 13px; } .card img { width: 48px; height: 48px; } }
.pinned { position: absolute; left: 12px; right: 12px; top: 58px; margin: 0 auto; width: fit-content; max-width: min(560px, calc(100% - 24px));
  background: rgba(0,0,0,.62); border-left: 3px solid var(--vitrine-accent, #ff3d6e); border-radius: 6px;
  padding: 6px 10px; font-size: .9em; overflow-wrap: anywhere; display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
.pinned .tag { font-size: .75em; text-transform: uppercase; letter-spacing: .05em; opacity: .75; margin-right: 6px; }
.pinned .who { font-weight: 700; margin-right: 6px; }
.floats { position: absolute; right: 6px; width: 64px; top: 15%; bottom: var(--vitrine-float-bottom, 35%); pointer-events: none; overflow: hidden; }
.float { position: absolute; width: 30px; height: 30px; animation: rise 2s ease-out both; }
.float svg { width: 100%; height: 100%; display: block; filter: drop-shadow(0 1px 2px rgba(0,0,0,.5)); }
@keyframes rise { 0% { top: 100%; opacity: 0; transform: scale(.6); } 12% { opacity: 1; transform: scale(1); }
  100% { top: -30px; opacity: 0; transform: translateX(var(--dx, 0)) scale(1.1); } }
/* layout fill: the page gave the player the whole screen (a phone). */
:host([layout=fill]) { aspect-ratio: auto; border-radius: 0; }
:host([layout=fill]) video { object-position: 50% 0; }
:host([layout=fill][orientation=portrait]) video { object-fit: cover; }
:host([layout=fill]) .card { left: 12px; right: var(--vitrine-card-right, 12px); bottom: var(--vitrine-card-bottom, 12px); width: auto;
  grid-template-columns: 44px minmax(0, 1fr) auto; align-items: center; gap: 2px 8px; padding: 6px 8px; font-size: 13px; }
:host([layout=fill]) .card img { width: 44px; height: 44px; }
:host([layout=fill]) .card .title { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
:host([layout=fill]) .card .price { font-size: 1em; }
:host([layout=fill]) .card .meta { font-size: 11px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
:host([layout=fill]) .card .actions { display: contents; }
:host([layout=fill]) .card .buy, :host([layout=fill]) .card .confirm { grid-column: 3; grid-row: 1; padding: 8px 12px; }
:host([layout=fill]) .card:has(.confirm:not([hidden])) .buy { display: none; }
:host([layout=fill]) .card .answer { grid-column: 1 / -1; font-size: 12px; }
:host([layout=fill]) .card .answer:empty { display: none; }
`;

// The reactions a viewer can tap, drawn as SVG so they look the same on
// every device (no emoji font needed).
const face = '<circle cx="12" cy="12" r="10" fill="#ffcc33"/>';
export const reactionIcons = {
  heart: '<svg viewBox="0 0 24 24" aria-hidden="true"><path fill="#ff3d6e" d="M12 21s-7.5-4.6-9.6-9.2C.9 8.4 2.8 4.5 6.6 4.5c2.2 0 3.9 1.3 5.4 3.2 1.5-1.9 3.2-3.2 5.4-3.2 3.8 0 5.7 3.9 4.2 7.3C19.5 16.4 12 21 12 21z"/></svg>',
  fire: '<svg viewBox="0 0 24 24" aria-hidden="true"><path fill="#ff7a1a" d="M12 2c1 3.5 5.5 6 5.5 11.2A5.5 5.5 0 0 1 12 22a5.5 5.5 0 0 1-5.5-5.6c0-2.3 1.1-4 2.4-5.3.2 1.6.9 2.7 2 3.2C10.2 10.5 11.4 6 12 2z"/><path fill="#ffd23f" d="M12 13c1.3 1.6 2.6 2.8 2.6 4.6a2.6 2.6 0 0 1-5.2 0c0-1.6 1.2-2.9 2.6-4.6z"/></svg>',
  clap: '<svg viewBox="0 0 24 24" aria-hidden="true"><g fill="#f5b94a" stroke="#a8650f" stroke-width=".8"><rect x="4.5" y="7" width="7" height="14" rx="3.5" transform="rotate(-18 8 14)"/><rect x="11.5" y="6" width="7" height="14" rx="3.5" transform="rotate(14 15 13)"/></g><path fill="none" stroke="#ffd23f" stroke-width="1.6" stroke-linecap="round" d="M12 1.5v2.5M17 2.5l-1.2 2M7 2.5l1.2 2"/></svg>',
  laugh: `<svg viewBox="0 0 24 24" aria-hidden="true">${face}<path fill="none" stroke="#5a3a00" stroke-width="1.6" stroke-linecap="round" d="M6.8 9.8q1.6-1.8 3.2 0M14 9.8q1.6-1.8 3.2 0"/><path fill="#5a3a00" d="M6.5 13h11a5.5 5.5 0 0 1-11 0z"/></svg>`,
  wow: `<svg viewBox="0 0 24 24" aria-hidden="true">${face}<circle cx="8.5" cy="9.5" r="1.5" fill="#5a3a00"/><circle cx="15.5" cy="9.5" r="1.5" fill="#5a3a00"/><ellipse cx="12" cy="15.8" rx="2.5" ry="3.1" fill="#5a3a00"/></svg>`,
};

// At most this many reactions float at once: a flood of taps costs the
// page a bounded number of DOM nodes, whatever the counts say.
export const maxFloats = 30;

const labels = {
  connecting: 'Connecting…',
  waiting: 'The stream starts soon. Stay here: it will play by itself.',
  reconnecting: 'Reconnecting…',
  ended: 'The stream has ended. Thanks for watching!',
  private: 'This stream is for the shop\'s signed-in shoppers: open it from the shop.',
  unsupported: 'This browser cannot play live video (it has no WebRTC).',
};

// price formats minor units (cents) in the currency's own way.
export function price(minor, currency, locale) {
  const fmt = new Intl.NumberFormat(locale, { style: 'currency', currency });
  const digits = fmt.resolvedOptions().maximumFractionDigits;
  return fmt.format(minor / 10 ** digits);
}

// The quality menu's entries, as the server takes them.
const qualities = ['auto', 'high', 'medium', 'low'];

// Error codes that answer a chat message or a name, not a buy.
const chatCodes = new Set(['name_required', 'invalid_name', 'name_taken', 'name_locked', 'muted', 'slow_mode', 'banned']);

// viewerRequest calls a Vitrine server's HTTP API as this browser's
// viewer (its Vitrine-Viewer token, kept from the welcome or a response).
// It resolves to {status, ok, body, retryAfter (seconds)}; it rejects when
// the server cannot be reached. <vitrine-chat> uses it without a player.
export async function viewerRequest(server, method, path, body, shopperToken = '') {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const token = localStorage.getItem('vitrine-viewer');
  if (token) headers['Vitrine-Viewer'] = token;
  if (shopperToken) headers['Vitrine-Shopper'] = shopperToken;
  const res = await fetch(`${server}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const fresh = res.headers.get('Vitrine-Viewer');
  if (fresh) localStorage.setItem('vitrine-viewer', fresh);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  return { status: res.status, ok: res.ok, body: data, retryAfter: Number(res.headers.get('Retry-After')) || 0 };
}

// reached: has the frame with RTP timestamp ts reached at (32-bit wrap-around)?
export function reached(ts, at) { return ((ts - at) | 0) >= 0; }

export class VitrinePlayer extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${css}</style>
      <video playsinline autoplay muted></video>
      <div class="status" role="status" aria-live="polite"></div>
      <button class="unmute" type="button" hidden>Tap to unmute</button>
      <div class="quality"><label for="quality">Quality</label>
        <select id="quality"><option value="auto">Auto</option><option value="high">High</option>
          <option value="medium">Medium</option><option value="low">Low</option></select></div>
      <section class="card" hidden aria-live="polite" aria-label="Product">
        <img alt="">
        <div><div class="title"></div><div class="price"></div><div class="meta"></div></div>
        <div class="actions"><button class="buy" type="button">Buy</button>
          <button class="confirm" type="button" hidden>Confirm order</button>
          <span class="answer" role="status"></span></div>
      </section>
      <p class="pinned" hidden aria-live="polite"><span class="tag">Pinned</span><span class="who"></span><span class="text"></span></p>
      <div class="floats" aria-hidden="true"></div>`;
    this.video = root.querySelector('video');
    this.statusEl = root.querySelector('.status');
    this.unmuteBtn = root.querySelector('.unmute');
    this.cardEl = root.querySelector('.card');
    this.buyBtn = root.querySelector('.buy');
    this.confirmBtn = root.querySelector('.confirm');
    this.answerEl = root.querySelector('.answer');
    this.qualityEl = root.querySelector('.quality select');
    this.pinnedEl = root.querySelector('.pinned');
    this.floatsEl = root.querySelector('.floats');
    this.pinned = null;
    // The page's CSS may lay out a portrait creator differently.
    const orient = () => {
      const { videoWidth: w, videoHeight: h } = this.video;
      if (!w || !h) return;
      const o = h > w ? 'portrait' : 'landscape';
      if (this.getAttribute('orientation') !== o) this.setAttribute('orientation', o);
    };
    this.video.addEventListener('loadedmetadata', orient);
    this.video.addEventListener('resize', orient);
    this.qualityEl.addEventListener('change', () => this.chooseQuality(this.qualityEl.value, true));
    this.unmuteBtn.addEventListener('click', () => { this.video.muted = false; this.unmuteBtn.hidden = true; });
    this.buyBtn.addEventListener('click', () => this.buy());
    this.confirmBtn.addEventListener('click', () => this.confirm());
    this.retryDelay = 1000;
    this.pending = []; // cues waiting for their frame
    this.card = null;
    this.sale = null;
    this.lastFrameAt = 0;
    this.playoutDelay = 0.1; // seconds, refreshed from getStats for the fallback
    this.old = null; // the session being moved from, playing until the new one's video comes
    this.connectAt = 0; // when the current session started
    this.checkedAt = 0; // when the node was last asked whether it is up
  }

  static get observedAttributes() { return ['quality']; }

  attributeChangedCallback(name, _old, value) {
    if (name === 'quality' && qualities.includes(value) && value !== this.qualityEl.value) this.chooseQuality(value);
  }

  connectedCallback() {
    this.stopped = false;
    if (!qualities.includes(this.getAttribute('quality'))) {
      const saved = localStorage.getItem(this.qualityKey);
      this.qualityEl.value = qualities.includes(saved) ? saved : 'auto';
    }
    this.node = this.server; // the node played from (base URL)
    this.nodes = []; // the other nodes, least loaded first (welcome)
    this.down = new Set(); // nodes found down since the last session started
    this.showStatus('connecting');
    this.watchFrames();
    this.tick = setInterval(() => this.everySecond(), 250);
    this.connect();
  }

  disconnectedCallback() {
    this.stopped = true;
    clearInterval(this.tick);
    this.teardown();
  }

  get server() { return (this.getAttribute('server') || location.origin).replace(/\/$/, ''); }
  get stream() { return this.getAttribute('stream') || 'demo'; }
  get shopperToken() { return this.getAttribute('shopper-token') || ''; }
  get quality() { return this.qualityEl.value; }
  set quality(value) { this.setAttribute('quality', value); }
  get qualityKey() { return `vitrine-quality:${location.pathname}`; }

  // chooseQuality applies a quality choice: reflected in the attribute and
  // sent to the server, now or when the data channel opens; the viewer's
  // own (byMenu) is kept for this page. Which layer the server sends for it
  // is the server's: Auto follows the viewer's bandwidth.
  chooseQuality(value, byMenu = false) {
    if (!qualities.includes(value)) return;
    this.qualityEl.value = value;
    if (byMenu) localStorage.setItem(this.qualityKey, value);
    if (this.getAttribute('quality') !== value) this.setAttribute('quality', value);
    this.sendQuality();
  }

  sendQuality() {
    this.send({ type: 'quality', value: this.qualityEl.value });
  }

  // send puts a message on the data channel; false when it is not open
  // (the caller may use the HTTP twin instead).
  send(msg) {
    if (!this.dc || this.dc.readyState !== 'open') return false;
    this.dc.send(JSON.stringify({ v: 1, ...msg }));
    return true;
  }

  // request calls the server's HTTP API as this viewer: viewerRequest
  // with this player's server and shopper token.
  request(method, path, body) { return viewerRequest(this.server, method, path, body, this.shopperToken); }

  // showHeight puts the resolution received next to Auto: "Auto (360p)".
  showHeight(height) {
    const auto = this.qualityEl.options[0];
    const text = height ? `Auto (${height}p)` : 'Auto';
    if (auto.textContent !== text) auto.textContent = text;
  }

  emit(name, detail, cancelable = false) {
    return this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true, cancelable }));
  }

  showStatus(state, reason) {
    this.state = state;
    const text = labels[state];
    this.statusEl.hidden = !text;
    this.statusEl.textContent = text || '';
    this.emit('vitrine-state', { state, reason });
  }

  // connect starts a session on this.node. With keep (the node asked the
  // player to move), the old session plays on until the new one's video
  // flows, so the last frame stays on screen instead of going black.
  async connect(keep = false) {
    if (this.stopped) return;
    clearTimeout(this.retryTimer); // this session replaces a retry due
    this.retryTimer = null;
    if (keep && this.pc) {
      this.dropOld();
      this.old = { pc: this.pc, location: this.location };
      this.pc = null; this.dc = null; this.location = null;
    } else {
      this.teardown();
    }
    // No WebRTC (an old or locked-down browser): nothing to play, no
    // data channel; <vitrine-chat> then reads the SSE stream itself.
    if (!window.RTCPeerConnection) { this.showStatus('unsupported'); return; }
    const pc = new RTCPeerConnection();
    this.pc = pc;
    this.connectAt = performance.now();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const dc = pc.createDataChannel('vitrine');
    this.dc = dc;
    dc.onmessage = (e) => { if (dc === this.dc) this.onMessage(e.data); };
    // A new session starts on Auto: a viewer who chose otherwise says so.
    dc.onopen = () => { if (this.qualityEl.value !== 'auto') this.sendQuality(); };
    const media = new MediaStream();
    pc.ontrack = (e) => {
      media.addTrack(e.track);
      if (!this.old) { this.play(media); return; }
      // Moving: the old picture stays until this video's first packets
      // (2 s at most: a stream with no video has nothing to wait for).
      if (e.track.kind !== 'video') return;
      const show = () => { if (pc === this.pc) this.play(media); };
      if (!e.track.muted) { show(); return; }
      e.track.addEventListener('unmute', show, { once: true });
      setTimeout(show, 2000);
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      const s = pc.connectionState;
      if (s === 'disconnected' || s === 'failed') this.check();
      else if (s === 'closed') this.retry();
    };
    const node = this.node;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (pc !== this.pc) return; // replaced meanwhile
      // Who is watching: the shop's shopper token, else our viewer token.
      // In the query, not a header, so it survives a node's 307 to
      // another origin (fetch drops Authorization there).
      const token = localStorage.getItem('vitrine-viewer') || '';
      const who = this.shopperToken ? `?shopper=${encodeURIComponent(this.shopperToken)}`
        : (token ? `?viewer=${encodeURIComponent(token)}` : '');
      const url = `${node}/whep/${encodeURIComponent(this.stream)}${who}`;
      // A full or draining node answers 307 to another; fetch follows it
      // with the same offer, and res.url is the node that took it.
      const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' },
        body: pc.localDescription.sdp, signal: abortAfter(10000) }).catch(() => null);
      if (pc !== this.pc) return;
      if (!res) { this.unreachable(node); return; }
      // A private stream without a (valid) shopper token: retrying cannot
      // help until the page gives the player a token.
      if (res.status === 401) { this.showStatus('private'); return; }
      if (res.status !== 201) throw new Error(`WHEP ${res.status}: ${await res.text()}`);
      this.location = new URL(res.headers.get('Location'), res.url).href;
      this.node = baseOf(res.url);
      this.down.clear();
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      this.retryDelay = 1000;
    } catch (err) {
      if (pc !== this.pc) return;
      console.warn('vitrine-player:', err);
      this.retry();
    }
  }

  // play shows a session's media on the video element (the same element
  // throughout, so the page's hooks on it stay).
  play(media) {
    this.dropOld();
    if (this.video.srcObject === media) return;
    this.lastTs = null; // another session's numbering may differ
    this.video.srcObject = media;
    this.video.play().then(() => { this.unmuteBtn.hidden = !this.video.muted; }).catch(() => {});
  }

  retry() {
    if (this.stopped || this.retryTimer) return;
    if (this.state !== 'ended') this.showStatus('reconnecting');
    this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 8000);
  }

  // moveTo is the node's own `reconnect` (it is draining): go to the node
  // it names at once, no backoff, the picture on screen meanwhile.
  moveTo(url) {
    let base;
    try { base = new URL(url); } catch { return; }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') return;
    this.node = base.href.replace(/\/$/, '');
    this.retryDelay = 1000;
    this.connect(true);
  }

  // check asks the node whether it is up (GET /healthz, 1 s) when its
  // picture stalls or its connection drops. Down: fail over at once. Up:
  // it is the network, which ICE may recover (disconnected), or a retry
  // with backoff mends (failed).
  async check() {
    if (this.checking || !this.pc) return;
    const pc = this.pc;
    const node = this.node;
    this.checking = true;
    const up = await reachable(node);
    this.checking = false;
    this.checkedAt = performance.now();
    if (pc !== this.pc || this.stopped) return; // moved on meanwhile
    if (!up) this.unreachable(node);
    else if (pc.connectionState === 'failed') this.retry();
  }

  // unreachable: the node did not answer. Go at once to the first of the
  // failover list not found down too, the server attribute last; when
  // every one is down, start over from the top with backoff.
  unreachable(node) {
    this.down.add(node);
    if (this.state === 'live') this.showStatus('reconnecting');
    const next = [...this.nodes, this.server].find((n) => !this.down.has(n));
    if (next) { this.node = next; this.connect(); return; }
    this.down.clear();
    this.node = this.nodes[0] || this.server;
    this.retry();
  }

  // stalled: the stream is live, yet no frame has been on screen for 1.5 s.
  // (A creator's own stall comes as stream.state reconnecting: not counted,
  // so it never makes the player hop.)
  stalled() {
    const now = performance.now();
    return this.framesWatched && this.state === 'live' && !!this.pc && !document.hidden && !this.video.paused
      && now - Math.max(this.lastFrameAt, this.connectAt) > 1500 && now - this.checkedAt > 1500;
  }

  teardown() {
    this.dropOld();
    if (this.location) fetch(this.location, { method: 'DELETE', keepalive: true }).catch(() => {});
    this.location = null;
    if (this.pc) { const pc = this.pc; this.pc = null; this.dc = null; pc.close(); }
  }

  // dropOld ends the session moved from, once the new one plays.
  dropOld() {
    if (!this.old) return;
    const { pc, location } = this.old;
    this.old = null;
    if (location) fetch(location, { method: 'DELETE', keepalive: true }).catch(() => {});
    pc.close();
  }

  onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    this.emit('vitrine-message', msg);
    switch (msg.type) {
      case 'welcome':
        if (msg.viewer) localStorage.setItem('vitrine-viewer', msg.viewer);
        // In a cluster: the other live nodes, to fail over to.
        this.nodes = Array.isArray(msg.nodes) ? msg.nodes.filter((n) => typeof n === 'string').map((n) => n.replace(/\/$/, '')) : [];
        break;
      case 'reconnect': this.moveTo(msg.url); break;
      case 'stream.state':
        this.showStatus(msg.state === 'live' ? 'live' : msg.state, msg.reason);
        break;
      case 'snapshot':
        this.pending = [];
        this.apply({ type: 'snapshot', card: msg.card, sale: msg.sale });
        break;
      case 'card.show': case 'card.hide': case 'sale.start': case 'sale.end': case 'custom':
        this.schedule(msg);
        break;
      case 'stock':
        for (const s of msg.stock || []) {
          if (this.card && this.card.sku === s.sku) this.card.stock = s.stock;
          if (this.sale && this.sale.sku === s.sku && s.units_left != null) this.sale.units_left = s.units_left;
        }
        this.render();
        break;
      case 'buy.result': this.onBuyResult(msg); break;
      case 'confirm.result': this.onConfirmed(msg.order); break;
      case 'quality.result':
        this.qualityEl.dataset.confirmed = msg.value;
        this.emit('vitrine-quality', { quality: msg.value });
        break;
      case 'error': this.onError(msg); break;
      case 'chat.snapshot': this.showPinned(msg.pinned); break;
      case 'chat.pin': this.showPinned(msg.message); break;
      case 'chat.delete':
        if (this.pinned && (msg.ids || []).includes(this.pinned.id)) this.showPinned(null);
        break;
      case 'reactions': this.floatReactions(msg.counts); break;
      // Counts due at the same tick as chat ride in the chat message.
      case 'chat': if (msg.reactions) this.floatReactions(msg.reactions); break;
    }
  }

  // onError shows a refused buy on the card. Errors about chat (they
  // have their own codes, or another key) are <vitrine-chat>'s.
  onError(msg) {
    if (!this.buying) return;
    const forBuy = msg.key ? msg.key === this.buyKey : !chatCodes.has(msg.code) || msg.code === 'banned';
    if (!forBuy) return;
    this.buying = false;
    this.answer(msg.code === 'banned' ? 'You cannot buy on this stream.' : msg.message, true);
    this.answerEl.dataset.outcome = msg.code;
    this.render();
  }

  // showPinned puts the pinned chat message over the video (as text).
  showPinned(m) {
    this.pinned = m && m.text ? m : null;
    this.pinnedEl.hidden = !this.pinned;
    if (!this.pinned) return;
    const named = m.role && m.name.toLowerCase() !== m.role ? `${m.name} (${m.role})` : m.name;
    this.pinnedEl.querySelector('.who').textContent = named;
    this.pinnedEl.querySelector('.text').textContent = m.text;
  }

  // floatReactions floats one icon per tap counted, spread over the
  // 250 ms until the next count, never more than maxFloats at once.
  floatReactions(counts) {
    const taps = Object.entries(counts || {}).filter(([value, n]) => reactionIcons[value] && n > 0);
    const total = taps.reduce((sum, [, n]) => sum + n, 0);
    let i = 0;
    for (const [value, n] of taps) {
      for (let k = 0; k < n; k++, i++) {
        if (this.floatsEl.childElementCount >= maxFloats) return;
        const el = document.createElement('span');
        el.className = 'float';
        el.dataset.value = value;
        el.innerHTML = reactionIcons[value];
        el.style.left = `${Math.round(Math.random() * 50)}%`;
        el.style.setProperty('--dx', `${Math.round(Math.random() * 30 - 15)}px`);
        el.style.animationDelay = `${Math.round((i / total) * 240)}ms`;
        el.style.animationDuration = `${1600 + Math.round(Math.random() * 800)}ms`;
        el.addEventListener('animationend', () => el.remove());
        setTimeout(() => el.remove(), 3500); // animations do not run in a hidden tab
        this.floatsEl.append(el);
      }
    }
  }

  // schedule holds a cue until the frame it belongs to is on screen.
  schedule(msg) {
    if (msg.at == null) { this.apply(msg); return; }
    msg.receivedAt = performance.now();
    this.pending.push(msg);
  }

  // watchFrames applies cues on the first presented frame whose RTP
  // timestamp reaches their `at`. Without rtpTimestamp (some browsers),
  // a cue applies once the current playout delay has passed since it
  // arrived; with no frames at all (waiting screen), at once.
  watchFrames() {
    if (!('requestVideoFrameCallback' in HTMLVideoElement.prototype)) return;
    this.framesWatched = true;
    const onFrame = (_now, meta) => {
      this.lastFrameAt = performance.now();
      const ts = meta.rtpTimestamp;
      if (ts != null && this.lastTs != null) {
        const step = (ts - this.lastTs) | 0;
        if (step > 0 && step < 9000) this.frameTicks = step;
      }
      this.lastTs = ts;
      // While moving, frames on screen are the old session's: cues of the
      // new one wait for its own.
      if (this.pending.length && !this.old) {
        // A click happened during some frame: the one on screen then, whose
        // timestamp is at most one frame before the click's instant. Other
        // cues carry a frame's own timestamp.
        const target = (c) => (c.at_source === 'click' ? c.at - (this.frameTicks || 3000) + 1 : c.at);
        const due = this.pending.filter((c) => (ts != null ? reached(ts, target(c))
          : performance.now() - c.receivedAt >= this.playoutDelay * 1000));
        if (due.length) {
          this.pending = this.pending.filter((c) => !due.includes(c));
          for (const c of due) this.apply(c, ts);
        }
      }
      if (!this.stopped) this.video.requestVideoFrameCallback(onFrame);
    };
    this.video.requestVideoFrameCallback(onFrame);
  }

  async everySecond() {
    if (this.stalled()) this.check();
    // No frames for a while (waiting, frozen): do not hold cues back.
    if (this.pending.length && performance.now() - this.lastFrameAt > 500) {
      const due = this.pending; this.pending = [];
      for (const c of due) this.apply(c);
    }
    if (this.sale) this.render();
    if (this.pc && this.pc.connectionState === 'connected' && !(this.statsAt > performance.now() - 2000)) {
      this.statsAt = performance.now();
      const stats = await this.pc.getStats();
      let height = 0;
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video' && s.jitterBufferEmittedCount > 0) {
          this.playoutDelay = s.jitterBufferDelay / s.jitterBufferEmittedCount;
        }
        if (s.type === 'inbound-rtp' && s.kind === 'video' && s.frameHeight) height = s.frameHeight;
      });
      this.showHeight(height);
    } else if (!this.pc || this.pc.connectionState !== 'connected') {
      this.showHeight(0);
    }
  }

  apply(msg, rtpTimestamp) {
    const had = this.card;
    switch (msg.type) {
      case 'snapshot':
        this.card = msg.card || null;
        this.setSale(msg.sale);
        break;
      case 'card.show':
        this.card = msg.card;
        this.resetAnswer();
        break;
      case 'card.hide':
        this.card = null;
        break;
      case 'sale.start':
        this.card = msg.card;
        this.setSale(msg.sale);
        this.resetAnswer();
        break;
      case 'sale.end':
        this.setSale(null);
        if (msg.card) this.card = msg.card;
        break;
    }
    this.render();
    if (this.card && msg.type !== 'custom') this.emit('vitrine-card', { card: this.card, sale: this.sale, rtpTimestamp, type: msg.type, id: msg.id });
    if (had && !this.card) this.emit('vitrine-card-hide', { sku: had.sku });
  }

  setSale(sale) {
    this.sale = sale ? { ...sale, endsAt: performance.now() + sale.ms_left } : null;
  }

  resetAnswer() {
    this.order = null;
    this.buying = false;
    this.answerEl.textContent = '';
    this.confirmBtn.hidden = true;
  }

  render() {
    const c = this.card;
    this.cardEl.hidden = !c;
    if (!c) return;
    const img = this.cardEl.querySelector('img');
    const src = c.image_url ? new URL(c.image_url, this.server + '/').href : '';
    if (img.getAttribute('src') !== src) img.setAttribute('src', src);
    img.alt = c.title;
    this.cardEl.querySelector('.title').textContent = c.title;
    const p = this.cardEl.querySelector('.price');
    p.textContent = price(c.price_minor, c.currency);
    if (c.list_price_minor > c.price_minor) {
      const list = document.createElement('span');
      list.className = 'list';
      list.textContent = price(c.list_price_minor, c.currency);
      p.append(list);
    }
    const meta = this.cardEl.querySelector('.meta');
    const sale = this.sale && this.sale.sku === c.sku ? this.sale : null;
    if (sale) {
      const left = Math.max(0, Math.round((sale.endsAt - performance.now()) / 1000));
      const units = sale.units > 0 ? `${sale.units_left} left · ` : '';
      meta.innerHTML = '';
      const s = document.createElement('span');
      s.className = 'sale';
      s.textContent = `Flash sale · ${units}ends in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`;
      meta.append(s);
    } else {
      meta.textContent = c.stock > 0 ? `${c.stock} in stock` : 'Out of stock';
    }
    const soldOut = sale ? sale.units > 0 && sale.units_left <= 0 : c.stock <= 0;
    this.buyBtn.disabled = this.buying || !!this.order || soldOut;
    this.buyBtn.textContent = soldOut && !this.order ? 'Sold out' : 'Buy';
  }

  // buy reserves one unit. The button is disabled at once and one
  // idempotency key is made per press, so a double click or a retry never
  // orders twice.
  async buy() {
    if (!this.card || this.buying) return;
    const detail = { sku: this.card.sku, qty: 1, card: this.card };
    if (!this.emit('vitrine-buy', detail, true)) return; // the shop handles it
    this.buying = true;
    this.render();
    this.answer('Reserving…');
    const key = crypto.randomUUID();
    this.buyKey = key;
    const msg = { type: 'buy', sku: detail.sku, qty: 1, key };
    if (this.send(msg)) return;
    try {
      const res = await this.request('POST', `/api/v1/streams/${encodeURIComponent(this.stream)}/buy`, msg);
      const err = res.body && res.body.error;
      if (err && err.code === 'banned') { this.onError({ ...err, key }); return; }
      if (!res.ok) throw new Error(err ? err.message : `HTTP ${res.status}`);
      this.onBuyResult({ result: res.body });
    } catch (err) {
      this.buying = false;
      this.answer(`Could not buy: ${err.message}`, true);
      this.render();
    }
  }

  onBuyResult(msg) {
    this.buying = false;
    const r = msg.result;
    if (r.outcome === 'reserved') {
      this.order = r.order;
      this.answer('Reserved for you. Confirm to complete your order.');
      this.confirmBtn.hidden = false;
      this.confirmBtn.disabled = false;
    } else {
      this.answer(r.reason || r.outcome, true);
    }
    this.answerEl.dataset.outcome = r.outcome;
    this.render();
  }

  confirm() {
    if (!this.order || !this.dc || this.dc.readyState !== 'open') return;
    this.confirmBtn.disabled = true;
    this.answer('Confirming…');
    this.send({ type: 'confirm', order_id: this.order.id });
  }

  onConfirmed(order) {
    this.confirmBtn.hidden = true;
    this.answer('Order confirmed. Thank you!');
    this.answerEl.dataset.outcome = 'confirmed';
    this.emit('vitrine-order', { order });
  }

  answer(text, isError = false) {
    this.answerEl.textContent = text;
    this.answerEl.style.color = isError ? '#c0143c' : '';
  }
}

// iceGathered waits for local candidates (host candidates come at once), so
// one POST carries everything and no trickle is needed.
export function iceGathered(pc, timeout = 2000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener('icegatheringstatechange', check); resolve(); };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    pc.addEventListener('icegatheringstatechange', check);
    setTimeout(done, timeout);
  });
}

// reachable: does the node answer GET /healthz within a second? Any
// answer counts (no-cors: another node's /healthz has no CORS headers).
async function reachable(base) {
  try {
    await fetch(`${base}/healthz`, { mode: 'no-cors', cache: 'no-store', signal: abortAfter(1000) });
    return true;
  } catch {
    return false;
  }
}

// abortAfter is an abort signal that fires after ms.
function abortAfter(ms) {
  const ctl = new AbortController();
  setTimeout(() => ctl.abort(), ms);
  return ctl.signal;
}

// baseOf is a node's base URL from one of its WHEP URLs.
function baseOf(url) {
  const u = new URL(url);
  return u.origin + u.pathname.replace(/\/whep\/[^/]*$/, '');
}

if (!customElements.get('vitrine-player')) customElements.define('vitrine-player', VitrinePlayer);
