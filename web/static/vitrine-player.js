// <vitrine-player server="https://host" stream="demo"> plays a Vitrine stream
// over WHEP with sub-second latency and lays the shop overlay over it: the
// product card appears on the video frame the creator showed it on.
//
// Attributes: server (default: this page's origin), stream (default "demo"),
// quality (auto, high, medium, low: the quality menu's choice; without it,
// the viewer's last choice on this page, else auto).
// Events (bubbling, composed):
//   vitrine-state  {state, reason}       waiting, live, reconnecting, ended
//   vitrine-card   {card, sale, rtpTimestamp, type, id}  a card is on screen
//                  (fired in the frame callback of the frame it appears on)
//   vitrine-buy    {sku, qty, card}      cancelable: call preventDefault() to
//                                        route Buy into your own cart instead
//   vitrine-order  {order}               an order was confirmed
//   vitrine-quality {quality}            the server took a quality choice
//   vitrine-message {...}                any overlay message, as received
// Style with CSS custom properties: --vitrine-accent, --vitrine-card-bg,
// --vitrine-card-fg, --vitrine-radius, --vitrine-font, --vitrine-aspect.

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
`;

const labels = {
  connecting: 'Connecting…',
  waiting: 'The stream starts soon. Stay here: it will play by itself.',
  reconnecting: 'Reconnecting…',
  ended: 'The stream has ended. Thanks for watching!',
};

// price formats minor units (cents) in the currency's own way.
export function price(minor, currency, locale) {
  const fmt = new Intl.NumberFormat(locale, { style: 'currency', currency });
  const digits = fmt.resolvedOptions().maximumFractionDigits;
  return fmt.format(minor / 10 ** digits);
}

// The quality menu's entries, as the server takes them.
const qualities = ['auto', 'high', 'medium', 'low'];

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
      </section>`;
    this.video = root.querySelector('video');
    this.statusEl = root.querySelector('.status');
    this.unmuteBtn = root.querySelector('.unmute');
    this.cardEl = root.querySelector('.card');
    this.buyBtn = root.querySelector('.buy');
    this.confirmBtn = root.querySelector('.confirm');
    this.answerEl = root.querySelector('.answer');
    this.qualityEl = root.querySelector('.quality select');
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
    if (this.dc && this.dc.readyState === 'open') {
      this.dc.send(JSON.stringify({ v: 1, type: 'quality', value: this.qualityEl.value }));
    }
  }

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

  async connect() {
    if (this.stopped) return;
    this.teardown();
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const dc = pc.createDataChannel('vitrine');
    this.dc = dc;
    dc.onmessage = (e) => this.onMessage(e.data);
    // A new session starts on Auto: a viewer who chose otherwise says so.
    dc.onopen = () => { if (this.qualityEl.value !== 'auto') this.sendQuality(); };
    const media = new MediaStream();
    pc.ontrack = (e) => {
      media.addTrack(e.track);
      this.video.srcObject = media;
      this.video.play().then(() => { this.unmuteBtn.hidden = !this.video.muted; }).catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') this.retry();
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      const token = localStorage.getItem('vitrine-viewer') || '';
      const url = `${this.server}/whep/${encodeURIComponent(this.stream)}${token ? `?viewer=${encodeURIComponent(token)}` : ''}`;
      const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
      if (res.status !== 201) throw new Error(`WHEP ${res.status}: ${await res.text()}`);
      this.location = new URL(res.headers.get('Location'), url).href;
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      this.retryDelay = 1000;
    } catch (err) {
      console.warn('vitrine-player:', err);
      this.retry();
    }
  }

  retry() {
    if (this.stopped || this.retryTimer) return;
    if (this.state !== 'ended') this.showStatus('reconnecting');
    this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 8000);
  }

  teardown() {
    if (this.location) fetch(this.location, { method: 'DELETE', keepalive: true }).catch(() => {});
    this.location = null;
    if (this.pc) { const pc = this.pc; this.pc = null; this.dc = null; pc.close(); }
  }

  onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    this.emit('vitrine-message', msg);
    switch (msg.type) {
      case 'welcome':
        if (msg.viewer) localStorage.setItem('vitrine-viewer', msg.viewer);
        break;
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
      case 'error': if (this.buying) this.answer(msg.message, true); break;
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
    const onFrame = (_now, meta) => {
      this.lastFrameAt = performance.now();
      const ts = meta.rtpTimestamp;
      if (ts != null && this.lastTs != null) {
        const step = (ts - this.lastTs) | 0;
        if (step > 0 && step < 9000) this.frameTicks = step;
      }
      this.lastTs = ts;
      if (this.pending.length) {
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
    const msg = { type: 'buy', sku: detail.sku, qty: 1, key };
    if (this.dc && this.dc.readyState === 'open') {
      this.dc.send(JSON.stringify(msg));
      return;
    }
    try {
      const headers = { 'Content-Type': 'application/json' };
      const token = localStorage.getItem('vitrine-viewer');
      if (token) headers['Vitrine-Viewer'] = token;
      const res = await fetch(`${this.server}/api/v1/streams/${encodeURIComponent(this.stream)}/buy`,
        { method: 'POST', headers, body: JSON.stringify(msg) });
      if (res.headers.get('Vitrine-Viewer')) localStorage.setItem('vitrine-viewer', res.headers.get('Vitrine-Viewer'));
      const body = await res.json();
      if (!res.ok) throw new Error(body.error ? body.error.message : `HTTP ${res.status}`);
      this.onBuyResult({ result: body });
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
    this.dc.send(JSON.stringify({ type: 'confirm', order_id: this.order.id }));
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

if (!customElements.get('vitrine-player')) customElements.define('vitrine-player', VitrinePlayer);
