// The creator studio: capture camera or screen, publish it over WHIP with the
// stream key, end it with a DELETE of the session.
import { iceGathered } from '/sdk/vitrine-player.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get('stream')) $('stream').value = params.get('stream');
$('key').value = sessionStorage.getItem('vitrine-key') || '';

let pc = null;
let sessionURL = null;
let media = null;

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

const reasons = {
  401: 'Enter the stream key.',
  403: 'Wrong stream key for this stream.',
  404: 'No stream with this name.',
  409: 'This stream is already live from another session. End it there first.',
};

async function goLive(e) {
  e.preventDefault();
  $('live').disabled = true;
  status('Connecting…');
  try {
    media = $('source').value === 'screen'
      ? await navigator.mediaDevices.getDisplayMedia({ video: true, audio: true })
      : await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: true });
  } catch (err) {
    status(`Camera or microphone not available: ${err.message}. Allow access and try again.`, true);
    $('live').disabled = false;
    return;
  }
  $('preview').srcObject = media;
  pc = new RTCPeerConnection();
  for (const track of media.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
  pc.onconnectionstatechange = () => {
    if (!pc) return;
    const s = pc.connectionState;
    if (s === 'connected') status('Live.');
    if (s === 'disconnected') status('Connection unstable: reconnecting…', true);
    if (s === 'failed') status('Connection lost. Press Go live again.', true);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const stream = $('stream').value;
  const key = $('key').value;
  const res = await fetch(`/whip/${encodeURIComponent(stream)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key}` },
    body: pc.localDescription.sdp,
  });
  if (res.status !== 201) {
    let msg = reasons[res.status];
    if (!msg) { try { msg = (await res.json()).error.message; } catch { msg = `Error ${res.status}`; } }
    status(msg, true);
    stop(false);
    return;
  }
  sessionStorage.setItem('vitrine-key', key);
  sessionURL = new URL(res.headers.get('Location'), location.href).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  $('end').disabled = false;
}

function stop(sendDelete = true) {
  if (sendDelete && sessionURL) fetch(sessionURL, { method: 'DELETE', keepalive: true }).catch(() => {});
  sessionURL = null;
  if (pc) { pc.close(); pc = null; }
  if (media) { media.getTracks().forEach((t) => t.stop()); media = null; }
  $('live').disabled = false;
  $('end').disabled = true;
}

$('form').addEventListener('submit', goLive);
$('end').addEventListener('click', () => { stop(); status('Stream ended.'); });
