// <vitrine-chat for="player-id"> is the live chat of a <vitrine-player>:
// the messages, a name picker, a message box with questions about the
// product on screen, and reaction buttons. It reads what the player
// receives (its vitrine-message events) and sends through the player's data
// channel, or over HTTP (the protocol's twins) when the channel is not open.
// Without a player on the page, or in a browser without WebRTC (no data
// channel can open), it reads the stream's SSE events itself and posts
// over HTTP.
//
// Attributes: for (the player's id), layout (overlay: floating over the
// video with a transparent background, as the watch page does on a phone;
// otherwise a panel); stream, server and shopper-token (default: the
// player's; what the chat uses without a player).
// Every text a viewer typed is put on the page with textContent, never as
// HTML: a message is text, whatever it contains.
import { reactionIcons, viewerRequest } from '../sdk/vitrine-player.js';

const css = `
:host { display: flex; flex-direction: column; min-height: 0; color: #eee; font: 14px/1.4 var(--vitrine-font, system-ui, sans-serif);
  background: #181818; border: 1px solid #2a2a2a; border-radius: var(--vitrine-radius, 8px); overflow: hidden; }
[hidden] { display: none !important; }
.box { flex: 1; display: flex; flex-direction: column; min-height: 0; }
.messages { flex: 1; min-height: 0; overflow-y: auto; list-style: none; margin: 0; padding: 8px; display: flex; flex-direction: column; gap: 4px; }
.messages li { overflow-wrap: anywhere; padding: 3px 8px; border-radius: 8px; }
.messages .first { margin-top: auto; }
.name { font-weight: 700; margin-right: 6px; color: #ffb3c6; }
li[data-role] .name { color: #ffd23f; }
.role { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; background: var(--vitrine-accent, #ff3d6e); color: #fff;
  border-radius: 4px; padding: 0 4px; margin-right: 6px; }
.badge { font-size: 11px; font-weight: 700; border-radius: 4px; padding: 0 5px; margin-right: 6px; background: #2f6fff; color: #fff; }
.tick { color: #6f6; font-weight: 700; margin-left: 6px; }
.held { font-size: 12px; font-style: italic; opacity: .8; margin-left: 6px; }
li.mine.waiting { opacity: .7; }
li.rejected { opacity: .6; }
li.rejected .text { text-decoration: line-through; }
li.rejected .held { color: #ff8080; font-style: normal; opacity: 1; }
.notice { margin: 0; padding: 4px 10px; font-size: 13px; color: #ffcf70; min-height: 0; }
.notice:empty { display: none; }
form { display: flex; gap: 6px; align-items: center; padding: 8px; border-top: 1px solid #2a2a2a; flex-wrap: wrap; }
input[type=text] { flex: 1; min-width: 0; font: inherit; color: inherit; background: #222; border: 1px solid #444; border-radius: 18px; padding: 8px 12px; }
button { font: inherit; border: 0; border-radius: 18px; padding: 8px 14px; cursor: pointer; background: var(--vitrine-accent, #ff3d6e); color: #fff; }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, input:focus-visible { outline: 2px solid #fff; outline-offset: 2px; }
button.me { background: #333; padding: 8px 10px; max-width: 9em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.top { flex-basis: 100%; display: flex; align-items: center; gap: 8px; }
.count { font-size: 12px; opacity: .7; margin-left: auto; }
.count.over { color: #ff8080; opacity: 1; }
.ask { font-size: 13px; display: flex; align-items: center; gap: 6px; cursor: pointer; }
.ask input { accent-color: var(--vitrine-accent, #ff3d6e); margin: 0; }
.pick label { flex-basis: 100%; font-size: 13px; }
.reactions { display: flex; gap: 6px; padding: 0 8px 8px; justify-content: flex-end; }
.reactions button { width: 40px; height: 40px; padding: 7px; border-radius: 50%; background: rgba(255,255,255,.1); }
.reactions svg { width: 100%; height: 100%; display: block; }
.reactions button:active { transform: scale(.9); }
/* overlay: over the video, bottom left, as live-shopping apps do. */
:host([layout=overlay]) { background: transparent; border: 0; border-radius: 0; flex-direction: row; align-items: flex-end; pointer-events: none; }
:host([layout=overlay]) .box { pointer-events: auto; height: 100%; flex: 0 1 auto; width: calc(100% - 64px); }
:host([layout=overlay]) .messages { -webkit-mask-image: linear-gradient(to bottom, transparent, #000 30%); mask-image: linear-gradient(to bottom, transparent, #000 30%); scrollbar-width: none; }
:host([layout=overlay]) .messages li { background: rgba(0,0,0,.42); align-self: flex-start; text-shadow: 0 1px 2px rgba(0,0,0,.6); }
:host([layout=overlay]) form { border-top: 0; padding: 6px 8px 10px; }
:host([layout=overlay]) input[type=text] { background: rgba(0,0,0,.45); border-color: rgba(255,255,255,.25); }
:host([layout=overlay]) .notice { background: rgba(0,0,0,.55); border-radius: 8px; margin: 0 8px; }
:host([layout=overlay]) .ask { text-shadow: 0 1px 2px #000; }
:host([layout=overlay]) .reactions { pointer-events: auto; flex-direction: column; padding: 0 10px 12px 0; width: 64px; align-items: flex-end; }
:host([layout=overlay]) .reactions button { background: rgba(0,0,0,.4); width: 44px; height: 44px; }
`;

// What a refusal means, in plain words. n is the wait in seconds.
function explain(code, n, message) {
  const wait = n >= 90 ? `${Math.ceil(n / 60)} min` : `${Math.max(1, Math.ceil(n))} s`;
  switch (code) {
    case 'muted': return n > 0 ? `You are muted for ${wait}.` : 'You are muted for now.';
    case 'banned': return 'You have been removed from this chat.';
    case 'slow_mode': return `Slow mode: wait ${wait} before your next message.`;
    case 'rate_limited': return n > 0 ? `Too fast: wait ${wait}.` : 'Too fast: wait a moment.';
    case 'invalid': return 'A message has 1 to 300 characters.';
    case 'name_required': return 'Pick a name first.';
    case 'invalid_name': return 'A name has 2 to 24 letters, digits, spaces, _ - or ., and starts with a letter or digit.';
    case 'name_taken': return 'That name is taken: try another one.';
    case 'name_locked': return `You can change your name again in ${wait}.`;
    default: return message || 'The server did not take that. Try again.';
  }
}

const nameCodes = new Set(['invalid_name', 'name_taken', 'name_locked']);
const maxLength = 300;
const maxShown = 200; // messages kept on the page

export class VitrineChat extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    const reacts = Object.keys(reactionIcons).map((v) => `<button type="button" data-value="${v}" aria-label="React: ${v}" title="${v}">${reactionIcons[v]}</button>`).join('');
    root.innerHTML = `<style>${css}</style>
      <div class="box" role="region" aria-label="Chat">
        <ol class="messages" aria-live="polite"></ol>
        <p class="notice" role="status"></p>
        <form class="pick" hidden><label for="name">Pick a name to chat (2-24 characters)</label>
          <input id="name" type="text" maxlength="24" autocomplete="nickname" placeholder="Your name">
          <button type="submit">Join chat</button></form>
        <form class="say" hidden>
          <div class="top"><label class="ask" hidden><input type="checkbox"> <span>Ask about this product</span></label>
            <span class="count" aria-live="off">0/${maxLength}</span></div>
          <button type="button" class="me" title="Change your name"></button>
          <input id="text" type="text" maxlength="${maxLength}" autocomplete="off" placeholder="Say something…" aria-label="Message">
          <button type="submit" class="send">Send</button></form>
      </div>
      <div class="reactions" role="group" aria-label="Reactions">${reacts}</div>`;
    this.list = root.querySelector('.messages');
    this.notice = root.querySelector('.notice');
    this.pickForm = root.querySelector('.pick');
    this.nameInput = this.pickForm.querySelector('input');
    this.sayForm = root.querySelector('.say');
    this.textInput = this.sayForm.querySelector('#text');
    this.countEl = this.sayForm.querySelector('.count');
    this.askEl = this.sayForm.querySelector('.ask');
    this.askBox = this.askEl.querySelector('input');
    this.meBtn = this.sayForm.querySelector('.me');
    this.sendBtn = this.sayForm.querySelector('.send');
    this.name = '';
    this.mine = new Set(); // ids of this viewer's messages
    this.waiting = null; // what the next refusal answers: 'name' or 'chat'
    // Slow mode: no sending before this (ms, Date.now). A mute only shows
    // in words: the server does not say when a moderator lifts it early,
    // so the page lets the viewer try and the server answers.
    this.blockedUntil = 0;
    this.banned = false;
    this.pickForm.addEventListener('submit', (e) => { e.preventDefault(); this.pickName(); });
    this.sayForm.addEventListener('submit', (e) => { e.preventDefault(); this.say(); });
    this.textInput.addEventListener('input', () => this.count());
    this.meBtn.addEventListener('click', () => this.showPicker(true));
    for (const b of root.querySelectorAll('.reactions button')) b.addEventListener('click', () => this.react(b.dataset.value));
    this.onEvent = (e) => this.handle(e);
  }

  connectedCallback() {
    // Events bubble from the player (composed): listening on the document
    // works whichever of the two elements the page creates first.
    for (const type of ['vitrine-message', 'vitrine-card', 'vitrine-card-hide']) document.addEventListener(type, this.onEvent);
    // The name this browser chose last, until the server's snapshot says
    // which name this viewer has (none: the picker).
    const saved = localStorage.getItem('vitrine-chat-name');
    if (saved && !this.name) { this.name = saved; this.meBtn.textContent = saved; }
    this.showPicker(false);
    this.timer = setInterval(() => this.tick(), 1000);
    // No data channel possible: the SSE stream. After the page's own
    // script has run (it may set the player's stream attribute).
    this.sseTimer = setTimeout(() => { if (!this.player || !window.RTCPeerConnection) this.listen(); });
  }

  disconnectedCallback() {
    for (const type of ['vitrine-message', 'vitrine-card', 'vitrine-card-hide']) document.removeEventListener(type, this.onEvent);
    clearInterval(this.timer);
    clearTimeout(this.sseTimer);
    this.es?.close();
    this.es = null;
  }

  get player() { return document.getElementById(this.getAttribute('for')) || document.querySelector('vitrine-player'); }
  get stream() { return this.getAttribute('stream') || this.player?.stream || 'demo'; }
  get server() { return (this.getAttribute('server') || this.player?.server || location.origin).replace(/\/$/, ''); }
  get shopper() { return this.getAttribute('shopper-token') || this.player?.shopperToken || ''; }
  get streamPath() { return `/api/v1/streams/${encodeURIComponent(this.stream)}`; }

  // send puts a message on the player's data channel; false without one.
  send(msg) { return !!this.player && !this.es && this.player.send(msg); }
  request(method, path, body) { return viewerRequest(this.server, method, path, body, this.shopper); }

  // listen reads the stream's SSE events: the same chat messages as the
  // data channel (no `you` in the snapshot, no answers: those come from
  // HTTP), and the overlay's, for the card a question is about.
  listen() {
    const q = this.shopper ? `?shopper=${encodeURIComponent(this.shopper)}` : '';
    this.es = new EventSource(`${this.server}${this.streamPath}/events${q}`);
    this.es.onmessage = (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      this.onMessage(m);
    };
  }

  showAsk(on) {
    this.askEl.hidden = !on;
    if (!on) this.askBox.checked = false;
  }

  handle(e) {
    if (e.target !== this.player || this.es) return;
    if (e.type === 'vitrine-card') { this.showAsk(true); return; }
    if (e.type === 'vitrine-card-hide') { this.showAsk(false); return; }
    this.onMessage(e.detail);
  }

  onMessage(m) {
    switch (m.type) {
      // Over SSE, the card on screen (the player's frame-exact events
      // are not there).
      case 'snapshot': case 'card.show': case 'sale.start': case 'card.hide':
        if (this.es) this.showAsk(m.type !== 'card.hide' && !!m.card);
        break;
      case 'chat.snapshot': this.onSnapshot(m); break;
      case 'chat': for (const msg of m.messages || []) this.add(msg); break;
      case 'chat.delete':
        for (const id of m.ids || []) this.list.querySelector(`li[data-id="${CSS.escape(id)}"]`)?.remove();
        this.markFirst();
        break;
      case 'chat.answered': {
        const li = this.list.querySelector(`li[data-id="${CSS.escape(m.id || '')}"]`);
        if (li && !li.querySelector('.tick')) li.append(this.tickEl());
        if (li) li.dataset.answered = '';
        break;
      }
      case 'chat.settings':
        this.slow = m.slow_s || 0;
        if (!this.slow) { this.blockedUntil = 0; this.count(); }
        if (!this.banned) this.tell(this.slow ? `Slow mode is on: one message every ${this.slow} s.` : '');
        break;
      case 'chat.rejected': this.rejected(m.id); break;
      case 'chat.name.result': this.named(m.name); break;
      case 'chat.result': this.onResult(m); break;
      case 'error':
        // An error with another key answers something else (a buy).
        if (m.key && !(this.waiting === 'chat' && this.sent && m.key === this.sent.key)) break;
        if (this.waiting) this.refused(m.code, (m.retry_after_ms || 0) / 1000, m.message);
        break;
    }
  }

  // onSnapshot: a new channel, a fresh start (the messages a moderator
  // removed meanwhile are not in it). This viewer's own messages still
  // waiting for approval stay.
  onSnapshot(m) {
    const waiting = [...this.list.querySelectorAll('li.waiting')];
    this.list.textContent = '';
    for (const msg of m.messages || []) this.add(msg);
    // Those approved meanwhile are in the snapshot already.
    for (const li of waiting) if (!this.list.querySelector(`li[data-id="${CSS.escape(li.dataset.id)}"]`)) this.list.append(li);
    this.markFirst();
    this.slow = m.slow_s || 0;
    // Over SSE there is no `you`: the name this browser chose stands
    // (the server answers name_required if it is not this viewer's).
    const you = m.you || {};
    if (m.you) this.banned = !!you.banned;
    const muted = you.muted_until_ms > Date.now() ? (you.muted_until_ms - Date.now()) / 1000 : 0;
    if (you.name) this.named(you.name, true);
    else if (m.you || !this.name) { this.name = ''; this.showPicker(false); }
    if (this.banned) this.tell(explain('banned'), 'banned');
    else if (muted) this.tell(explain('muted', muted), 'muted');
    else this.tell(this.slow ? `Slow mode is on: one message every ${this.slow} s.` : '');
    this.scrollDown(true);
  }

  // add shows a message (or replaces the one with its id: this viewer's
  // held message, once approved).
  add(msg) {
    if (!msg || !msg.id) return;
    const li = document.createElement('li');
    li.dataset.id = msg.id;
    if (msg.role) {
      li.dataset.role = msg.role;
      const role = document.createElement('span');
      role.className = 'role';
      role.textContent = msg.role;
      li.append(role);
    }
    if (msg.question) {
      li.dataset.question = '';
      const q = document.createElement('span');
      q.className = 'badge';
      q.textContent = 'Question';
      li.append(q);
    }
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = msg.name;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = msg.text;
    li.append(name, text);
    if (msg.answered) { li.dataset.answered = ''; li.append(this.tickEl()); }
    if (this.mine.has(msg.id) || (msg.name && msg.name === this.name && !msg.role)) li.classList.add('mine');
    if (msg.status === 'held') {
      li.classList.add('waiting');
      const h = document.createElement('span');
      h.className = 'held';
      h.textContent = 'waiting for approval';
      li.append(h);
    }
    const stick = this.atBottom();
    const old = this.list.querySelector(`li[data-id="${CSS.escape(msg.id)}"]`);
    if (old) old.replaceWith(li);
    else this.list.append(li);
    while (this.list.children.length > maxShown) this.list.firstElementChild.remove();
    this.markFirst();
    this.scrollDown(stick);
  }

  // rejected: a moderator turned down a held message. The author's page
  // says so, then lets it go; other pages never showed it.
  rejected(id) {
    const li = this.list.querySelector(`li.waiting[data-id="${CSS.escape(id || '')}"]`);
    if (!li) return;
    li.classList.replace('waiting', 'rejected');
    li.querySelector('.held').textContent = 'not approved by the moderators';
    setTimeout(() => { li.remove(); this.markFirst(); }, 8000);
  }

  tickEl() {
    const t = document.createElement('span');
    t.className = 'tick';
    t.title = 'Answered';
    t.textContent = '✓ answered';
    return t;
  }

  // markFirst pushes a short list to the bottom of the box (its first
  // item takes the space above), where the input is.
  markFirst() {
    for (const li of this.list.querySelectorAll('.first')) li.classList.remove('first');
    this.list.firstElementChild?.classList.add('first');
  }

  atBottom() { return this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40; }
  scrollDown(stick) { if (stick) this.list.scrollTop = this.list.scrollHeight; }

  // showPicker shows the name picker instead of the message box: always
  // without a name, else when the viewer asks to change it (open). What
  // the viewer typed stays while the picker is open.
  showPicker(open) {
    const picking = !this.name || open;
    if (picking && this.pickForm.hidden) {
      this.nameInput.value = this.name || localStorage.getItem('vitrine-chat-name') || '';
      this.pickForm.querySelector('button').textContent = this.name ? 'Change name' : 'Join chat';
    }
    this.pickForm.hidden = !picking;
    this.sayForm.hidden = picking;
    if (open) this.nameInput.focus();
  }

  named(name, quiet = false) {
    this.name = name;
    localStorage.setItem('vitrine-chat-name', name);
    this.meBtn.textContent = name;
    this.showPicker(false);
    if (this.waiting === 'name') this.waiting = null;
    if (!quiet) this.tell('');
    this.count();
  }

  // pickName asks the server for a name: the first is free, after that it
  // changes once per 10 minutes (name_locked).
  async pickName() {
    const name = this.nameInput.value.trim();
    if (!name) return;
    if (name === this.name) { this.showPicker(false); return; }
    this.waiting = 'name';
    if (this.send({ type: 'chat.name', name })) return;
    this.http('PUT', '/api/v1/chat/name', { name }, (body) => this.named(body.name));
  }

  count() {
    const n = [...this.textInput.value].length;
    this.countEl.textContent = `${n}/${maxLength}`;
    this.countEl.classList.toggle('over', n > maxLength);
    this.sendBtn.disabled = this.banned || n === 0 || n > maxLength || this.blockedUntil > Date.now();
  }

  say() {
    const text = this.textInput.value.trim();
    if (!text || [...text].length > maxLength || this.sendBtn.disabled) return;
    const question = !this.askEl.hidden && this.askBox.checked;
    const key = crypto.randomUUID();
    this.sent = { key, text, question };
    this.waiting = 'chat';
    this.textInput.value = '';
    this.askBox.checked = false;
    this.count();
    if (this.send({ type: 'chat', text, question, key })) return;
    this.http('POST', `${this.streamPath}/chat`, { text, question }, (body) => this.onResult({ key, ...body }));
  }

  // onResult: a held message is shown to its author only, marked.
  onResult(m) {
    if (this.waiting === 'chat') this.waiting = null;
    if (m.id) this.mine.add(m.id);
    if (m.status === 'held' && this.sent && (!m.key || m.key === this.sent.key)) {
      this.add({ id: m.id, name: this.name, text: this.sent.text, question: this.sent.question, status: 'held' });
    }
    if (!this.banned) this.tell(this.slow ? `Slow mode is on: one message every ${this.slow} s.` : '');
    this.count();
  }

  refused(code, seconds, message) {
    const about = this.waiting;
    this.waiting = null;
    if (code === 'banned') this.banned = true;
    if (code === 'slow_mode' && seconds > 0) this.blockedUntil = Date.now() + seconds * 1000;
    if (code === 'name_required') { this.name = ''; this.showPicker(false); }
    // A refused message goes back in the box, to send once allowed.
    if (about === 'chat' && this.sent && !this.textInput.value && code !== 'banned') this.textInput.value = this.sent.text;
    this.tell(explain(code, seconds, message), code);
    // A refused first name keeps the picker open; a refused change (too
    // soon) goes back to chatting under the name the viewer has.
    if (about === 'name' || nameCodes.has(code)) this.showPicker(!this.name || code !== 'name_locked');
    this.count();
  }

  tell(text, code = '') {
    this.notice.textContent = text;
    if (code) this.notice.dataset.code = code;
    else delete this.notice.dataset.code;
  }

  // http is the twin of a data channel message: ok is called with the
  // answer's body, a refusal is shown as the channel's would be.
  async http(method, path, body, ok) {
    try {
      const res = await this.request(method, path, body);
      if (res.ok) { ok(res.body || {}); return; }
      const err = (res.body && res.body.error) || {};
      this.refused(err.code || 'internal', res.retryAfter, err.message);
    } catch {
      this.waiting = null;
      this.tell('Cannot reach the server: try again.');
    }
  }

  // react: one tap, one message; the counts come back to every viewer
  // (this one too) and float over the video.
  react(value) {
    if (this.send({ type: 'react', value })) return;
    this.request('POST', `${this.streamPath}/reactions`, { value }).catch(() => {});
  }

  // tick counts a slow-mode wait down, and lets sending again.
  tick() {
    if (!this.blockedUntil) return;
    const left = (this.blockedUntil - Date.now()) / 1000;
    if (left <= 0) {
      this.blockedUntil = 0;
      if (this.notice.dataset.code === 'slow_mode') this.tell(this.slow ? `Slow mode is on: one message every ${this.slow} s.` : '');
      this.count();
    } else if (this.notice.dataset.code === 'slow_mode') {
      this.tell(explain('slow_mode', left), 'slow_mode');
    }
  }
}

if (!customElements.get('vitrine-chat')) customElements.define('vitrine-chat', VitrineChat);
