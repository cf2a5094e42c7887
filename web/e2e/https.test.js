// The studio on HTTPS at a name that is not localhost: the browser gives a
// camera only to a secure page, so this is how a creator on another machine
// goes live. A test CA signs the name; Chromium maps the name to 127.0.0.1
// and trusts the certificate's key (--ignore-certificate-errors-spki-list),
// as it would trust a real CA's certificate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launch, openStudio, startServer, videoStats, waitFor } from './harness.js';

const NAME = 'studio.vitrine.test';
// The harness checks readiness on 127.0.0.1, which the certificate does not name.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

let server;
let browser;
let spki;
before(async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vitrine-tls-'));
  const f = (n) => path.join(dir, n);
  const ssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=Vitrine test CA',
    '-keyout', f('ca.key'), '-out', f('ca.pem'));
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${NAME}`, '-keyout', f('key.pem'), '-out', f('req.pem'));
  writeFileSync(f('ext'), `subjectAltName=DNS:${NAME}\nextendedKeyUsage=serverAuth\n`);
  ssl('x509', '-req', '-in', f('req.pem'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f('ext'), '-out', f('leaf.pem'));
  writeFileSync(f('chain.pem'), Buffer.concat([ssl('x509', '-in', f('leaf.pem')), ssl('x509', '-in', f('ca.pem'))]));
  const pub = ssl('x509', '-in', f('leaf.pem'), '-pubkey', '-noout');
  const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
  spki = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der }).toString('base64');
  server = await startServer({}, { tls: { cert: f('chain.pem'), key: f('key.pem'), name: NAME } });
  browser = await launch({ extraArgs: [`--host-resolver-rules=MAP ${NAME} 127.0.0.1`, `--ignore-certificate-errors-spki-list=${spki}`] });
});
after(async () => { await browser?.close(); server?.stop(); });

test('the studio goes live over HTTPS at a public-style name, and a viewer plays', async () => {
  assert.match(server.base, /^https:\/\/studio\.vitrine\.test:\d+$/);
  const studio = await openStudio(await browser.newContext(), server.base);
  assert.equal(await studio.evaluate(() => window.isSecureContext && location.protocol), 'https:');
  await studio.click('#golive');
  await studio.waitForSelector('#state[data-state=live]', { timeout: 15000 });
  const viewer = await (await browser.newContext()).newPage();
  await viewer.goto(`${server.base}/watch/demo`);
  await waitFor('the viewer decodes video over the HTTPS page', async () => ((await videoStats(viewer))?.frames || 0) > 30, 20000);
  // HTTP/2 on the wire, as a browser sees it.
  const proto = await viewer.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(proto, 'h2');
});
