// The studio's chat and moderation panels: the live chat (from the SSE
// stream the studio already follows) with an action on each message,
// posting as host, the held queue, open questions per product, and the
// room's settings (slow mode, word filter, calm mode), polled from
// GET .../chat every 2 s, and the moderation log (GET .../chat/log, after
// each action taken here and every 10 s). A moderator (signed in with a moderator key)
// gets these panels only.
// Viewers' text goes on the page with textContent only.

const $ = (id) => document.getElementById(id);
const maxShown = 200;

let ctx = null; // {stream, api, role}
let pinnedId = '';
let titles = {}; // product titles by SKU, for the question queue
let filterEdited = false; // the word filter is being edited: polls leave it
let polled = null; // the last GET .../chat
let actions = 0; // actions taken here: a poll that began before one is stale

// startChat shows the panels and keeps them current. api(path, opts) is
// the studio's bearer-key fetch.
export function startChat({ stream, api, role }) {
  ctx = { stream, api, role, base: `/api/v1/streams/${encodeURIComponent(stream)}/chat` };
  $('modkey-box').hidden = role === 'moderator';
  if (role === 'moderator') $('chat-text').placeholder = 'Write to viewers as moderator';
  fetch('/api/v1/products').then((r) => r.json()).then((b) => {
    for (const p of b.products || []) titles[p.sku] = p.title;
    if (polled) renderQuestions(polled.questions);
  }).catch(() => {});
  poll();
  setInterval(poll, 2000);
  loadLog();
  setInterval(loadLog, 10000);
}

// onEvent takes the studio's SSE messages; chat ones update the live chat.
export function onEvent(m) {
  if (!ctx) return;
  switch (m.type) {
    case 'chat.snapshot':
      $('chat-live').textContent = '';
      for (const msg of m.messages || []) addLive(msg);
      showPinned(m.pinned);
      break;
    case 'chat': for (const msg of m.messages || []) addLive(msg); break;
    case 'chat.delete':
      for (const id of m.ids || []) $('chat-live').querySelector(`li[data-id="${CSS.escape(id)}"]`)?.remove();
      if ((m.ids || []).includes(pinnedId)) showPinned(null);
      break;
    case 'chat.answered': {
      const li = $('chat-live').querySelector(`li[data-id="${CSS.escape(m.id || '')}"]`);
      if (li) { li.dataset.answered = ''; li.querySelector('button.answer')?.remove(); }
      break;
    }
    case 'chat.pin': showPinned(m.message); break;
    case 'chat.rejected': $('held').querySelector(`li[data-id="${CSS.escape(m.id || '')}"]`)?.remove(); break;
  }
}

// line is a message as text: [role] [Question about X] name: text.
function line(msg) {
  const div = document.createElement('div');
  div.className = 'line';
  if (msg.role) div.append(tag('role', msg.role));
  if (msg.question) div.append(tag('q', msg.sku ? `Question · ${titles[msg.sku] || msg.sku}` : 'Question'));
  const name = document.createElement('strong');
  name.textContent = msg.name;
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = msg.text;
  div.append(name, ' ', text);
  if (msg.answered) div.append(tag('done', '✓ answered'));
  return div;
}

function tag(cls, text) {
  const s = document.createElement('span');
  s.className = `tag ${cls}`;
  s.textContent = text;
  return s;
}

function button(cls, text, fn, secondary = true) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = `${cls}${secondary ? ' secondary' : ''}`;
  b.textContent = text;
  b.addEventListener('click', async () => { b.disabled = true; await fn(); b.disabled = false; });
  return b;
}

function addLive(msg) {
  const list = $('chat-live');
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = document.createElement('li');
  li.dataset.id = msg.id;
  if (msg.answered) li.dataset.answered = '';
  li.append(line(msg));
  const acts = document.createElement('div');
  acts.className = 'acts';
  acts.append(button('delete', 'Delete', () => act({ action: 'delete', message: msg.id })));
  if (!msg.role && msg.viewer) {
    acts.append(button('mute', 'Mute 10 min', () => act({ action: 'mute', viewer: msg.viewer, minutes: 10 })));
    acts.append(button('ban', 'Ban', () => act({ action: 'ban', viewer: msg.viewer })));
  }
  acts.append(button('pin', 'Pin', () => act({ action: 'pin', message: msg.id })));
  if (msg.question && !msg.answered) acts.append(button('answer', 'Answered', () => act({ action: 'answer', message: msg.id })));
  li.append(acts);
  const old = list.querySelector(`li[data-id="${CSS.escape(msg.id)}"]`);
  if (old) old.replaceWith(li);
  else list.append(li);
  while (list.children.length > maxShown) list.firstElementChild.remove();
  if (stick) list.scrollTop = list.scrollHeight;
}

function showPinned(msg) {
  pinnedId = msg ? msg.id : '';
  $('chat-pinned').hidden = !msg;
  const text = $('chat-pinned-text');
  text.textContent = '';
  if (msg) text.append(line(msg));
}

// act takes one moderation action; the queues are read again at once.
async function act(body) {
  actions++;
  try {
    await ctx.api(`${ctx.base}/actions`, { method: 'POST', body: JSON.stringify(body) });
    setStatus('');
  } catch (err) {
    setStatus(`Not done: ${err.message}`, true);
  }
  await Promise.all([poll(), loadLog()]);
}

// loadLog shows the moderation log, newest first: when, who (host,
// moderator, admin), what, and on what (the server's words for it: a
// name, a message, a setting's value).
async function loadLog() {
  let v;
  try { v = await ctx.api(`${ctx.base}/log`); } catch { return; }
  const list = $('modlog');
  list.textContent = '';
  for (const a of (v.actions || []).slice(0, 50)) {
    const li = document.createElement('li');
    li.dataset.by = a.by;
    li.dataset.action = a.action;
    const at = new Date(a.at);
    const time = document.createElement('time');
    time.dateTime = a.at;
    time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    const what = document.createElement('span');
    what.className = 'what';
    what.textContent = a.action;
    const target = document.createElement('span');
    target.className = 'target';
    target.textContent = a.detail || a.target || '';
    if (a.target) target.title = a.target;
    li.append(time, ' ', tag('by', a.by), what, ' ', target);
    list.append(li);
  }
  $('modlog-empty').hidden = list.children.length > 0;
}

function setStatus(text, error = false) {
  $('chat-state').textContent = text;
  $('chat-state').classList.toggle('error', error);
}

async function poll() {
  const seen = actions;
  let v;
  try { v = await ctx.api(ctx.base); } catch (err) { setStatus(`Chat not loaded: ${err.message}`, true); return; }
  // Read before an action taken meanwhile (a box just ticked would
  // flip back): the poll after the action shows it.
  if (seen !== actions) return;
  polled = v;
  renderHeld(v.held || []);
  renderQuestions(v.questions || []);
  renderSettings(v.settings || {});
  renderRestricted(v.muted || [], v.banned || []);
  // The SSE stream may have missed a pin made before it connected.
  if ((v.pinned ? v.pinned.id : '') !== pinnedId) showPinned(v.pinned || null);
}

function renderHeld(held) {
  $('held-n').textContent = held.length ? `(${held.length})` : '';
  const list = $('held');
  list.textContent = '';
  for (const msg of held) {
    const li = document.createElement('li');
    li.dataset.id = msg.id;
    li.append(line(msg));
    const acts = document.createElement('div');
    acts.className = 'acts';
    acts.append(button('approve', 'Approve', () => act({ action: 'approve', message: msg.id }), false),
      button('reject', 'Reject', () => act({ action: 'reject', message: msg.id })));
    li.append(acts);
    list.append(li);
  }
  $('held-empty').hidden = held.length > 0;
}

function renderQuestions(groups) {
  const box = $('questions');
  box.textContent = '';
  for (const g of groups) {
    if (!g.messages.length) continue;
    const sec = document.createElement('div');
    sec.className = 'qgroup';
    sec.dataset.sku = g.sku;
    const h = document.createElement('h3');
    h.textContent = g.sku ? (titles[g.sku] || g.sku) : 'No product on screen';
    const list = document.createElement('ol');
    list.className = 'chatlog';
    for (const msg of g.messages) {
      const li = document.createElement('li');
      li.dataset.id = msg.id;
      li.append(line({ ...msg, question: false }));
      const acts = document.createElement('div');
      acts.className = 'acts';
      acts.append(button('answer', 'Answered', () => act({ action: 'answer', message: msg.id }), false),
        button('pin', 'Pin', () => act({ action: 'pin', message: msg.id })));
      li.append(acts);
      list.append(li);
    }
    sec.append(h, list);
    box.append(sec);
  }
  $('questions-empty').hidden = box.children.length > 0;
}

// renderSettings shows the room's settings, except a field being edited.
function renderSettings(s) {
  const slow = String(s.slow_s || 0);
  if (document.activeElement !== $('slow')) {
    if (![...$('slow').options].some((o) => o.value === slow)) $('slow').append(new Option(`${slow} s`, slow));
    $('slow').value = slow;
  }
  $('calm').checked = !!s.calm;
  const f = s.filter || {};
  if (!filterEdited && document.activeElement !== $('filter')) {
    $('filter').value = (f.words || []).join('\n');
    $('filter-mode').value = f.mode === 'hold' ? 'hold' : 'mask';
  }
}

function renderRestricted(muted, banned) {
  const list = $('restricted');
  list.textContent = '';
  for (const m of muted) {
    const li = document.createElement('li');
    li.dataset.viewer = m.viewer;
    const mins = Math.max(1, Math.ceil((m.until_ms - Date.now()) / 60000));
    li.append(`${m.name || 'A viewer'}: muted, ${mins} min left `, button('unmute', 'Unmute', () => act({ action: 'unmute', viewer: m.viewer })));
    list.append(li);
  }
  for (const b of banned) {
    const li = document.createElement('li');
    li.dataset.viewer = b.viewer;
    li.append(`${b.name || 'A viewer'}: banned `, button('unban', 'Unban', () => act({ action: 'unban', viewer: b.viewer })));
    list.append(li);
  }
  $('restricted-empty').hidden = list.children.length > 0;
}

$('chat-post').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('chat-text').value.trim();
  if (!text) return;
  try {
    await ctx.api(ctx.base, { method: 'POST', body: JSON.stringify({ text }) });
    $('chat-text').value = '';
    setStatus('');
  } catch (err) {
    setStatus(`Not sent: ${err.message}`, true);
  }
});
$('chat-unpin').addEventListener('click', () => act({ action: 'unpin' }));
$('slow').addEventListener('change', () => act({ action: 'slow', seconds: Number($('slow').value) }));
$('calm').addEventListener('change', () => act({ action: 'calm', on: $('calm').checked }));
$('filter').addEventListener('input', () => { filterEdited = true; });
$('filter-save').addEventListener('click', async () => {
  const words = $('filter').value.split(/[\n,]/).map((w) => w.trim()).filter(Boolean);
  await act({ action: 'filter', words, mode: $('filter-mode').value });
  filterEdited = false;
});

// A moderator key for a helper: the link opens the studio for moderating,
// the key signs in. A new key stops the previous one.
$('modkey').addEventListener('click', async () => {
  try {
    const { key } = await ctx.api(`${ctx.base}/moderator-key`, { method: 'POST' });
    const link = `${location.origin}/studio?stream=${encodeURIComponent(ctx.stream)}&role=moderator`;
    $('modlink').href = link;
    $('modlink').textContent = link;
    $('modkey-value').textContent = key;
    $('modkey-out').hidden = false;
  } catch (err) {
    setStatus(`No moderator key: ${err.message}`, true);
  }
});
