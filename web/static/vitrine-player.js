// <vitrine-player server="https://host" stream="demo"> plays a Vitrine stream
// over WHEP with sub-second latency. It shows the stream's state (waiting,
// live, reconnecting, ended) from the data channel and reconnects by itself.
// Events: "vitrine-state" (detail: {state, reason}), "vitrine-message"
// (detail: any data-channel message).

const css = `
:host { display: block; position: relative; background: #000; color: #fff;
  aspect-ratio: var(--vitrine-aspect, 16 / 9); font: 15px/1.4 system-ui, sans-serif; }
video { width: 100%; height: 100%; object-fit: contain; display: block; }
.status { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
  text-align: center; padding: 1em; background: rgba(0,0,0,.55); }
.status[hidden] { display: none; }
button.unmute { position: absolute; left: 12px; bottom: 12px; border: 0; border-radius: 6px;
  padding: 8px 12px; font: inherit; cursor: pointer;
  background: var(--vitrine-accent, #ff3d6e); color: #fff; }
button.unmute[hidden] { display: none; }
`;

const labels = {
  connecting: 'Connecting…',
  waiting: 'The stream starts soon. Stay here: it will play by itself.',
  reconnecting: 'The creator is reconnecting…',
  ended: 'The stream has ended.',
};

export class VitrinePlayer extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${css}</style>
      <video playsinline autoplay muted></video>
      <div class="status" role="status" aria-live="polite"></div>
      <button class="unmute" type="button">Tap to unmute</button>`;
    this.video = root.querySelector('video');
    this.statusEl = root.querySelector('.status');
    this.unmuteBtn = root.querySelector('.unmute');
    this.unmuteBtn.addEventListener('click', () => {
      this.video.muted = false;
      this.unmuteBtn.hidden = true;
    });
    this.retryDelay = 1000;
  }

  connectedCallback() { this.showStatus('connecting'); this.connect(); }
  disconnectedCallback() { this.stopped = true; this.teardown(); }

  get whepURL() {
    const server = (this.getAttribute('server') || location.origin).replace(/\/$/, '');
    return `${server}/whep/${encodeURIComponent(this.getAttribute('stream') || 'demo')}`;
  }

  showStatus(state, reason) {
    this.state = state;
    const text = labels[state];
    this.statusEl.hidden = !text;
    this.statusEl.textContent = text ? text + (reason && state === 'ended' ? '' : '') : '';
    this.dispatchEvent(new CustomEvent('vitrine-state', { detail: { state, reason } }));
  }

  async connect() {
    if (this.stopped) return;
    this.teardown();
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const dc = pc.createDataChannel('vitrine');
    dc.onmessage = (e) => this.onMessage(e.data);
    const stream = new MediaStream();
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      this.video.srcObject = stream;
      this.video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') this.retry();
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      const res = await fetch(this.whepURL, {
        method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
      });
      if (res.status !== 201) throw new Error(`WHEP ${res.status}: ${await res.text()}`);
      this.location = new URL(res.headers.get('Location'), this.whepURL).href;
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      this.retryDelay = 1000;
      this.unmuteBtn.hidden = !this.video.muted;
    } catch (err) {
      console.warn('vitrine-player:', err);
      this.retry();
    }
  }

  onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === 'stream.state') this.showStatus(msg.state === 'live' ? 'live' : msg.state, msg.reason);
    this.dispatchEvent(new CustomEvent('vitrine-message', { detail: msg }));
  }

  retry() {
    if (this.stopped || this.retryTimer) return;
    this.showStatus('reconnecting');
    this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 10000);
  }

  teardown() {
    if (this.location) fetch(this.location, { method: 'DELETE', keepalive: true }).catch(() => {});
    this.location = null;
    if (this.pc) { const pc = this.pc; this.pc = null; pc.close(); }
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
