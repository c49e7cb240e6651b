// Drives the embedded dashboard in a real Chromium against a real crashgrid node fed by
// `crashgrid loadgen`, then kills the node and checks that the dashboard reconnects by itself.
//
//   cargo build -p crashgrid && (cd tests/browser && npm ci) && node --test tests/browser/
//
// Environment: CRASHGRID_BIN (default target/debug/crashgrid), CHROMIUM_PATH (default
// /usr/bin/chromium). Screenshots go to target/screenshots/{dashboard,group}.png.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(ROOT, process.env.CRASHGRID_BIN || 'target/debug/crashgrid');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'target', 'screenshots');
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// ------------------------------------------------------------------ processes

const children = new Set();
const tmpDirs = [];
let browser = null;

function start(name, args) {
  const child = spawn(BIN, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  child.name = name;
  child.log = [];
  const keep = (chunk) => {
    child.log.push(chunk.toString());
    if (child.log.length > 400) child.log.shift();
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    children.delete(child);
    child.exitStatus = signal || code;
    resolve(child.exitStatus);
  }));
  children.add(child);
  return child;
}

function tail(child, lines = 30) {
  return child.log.join('').split('\n').slice(-lines).join('\n');
}

async function killAll() {
  for (const child of [...children]) child.kill('SIGKILL');
  await Promise.all([...children].map((c) => c.exited));
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  browser = null;
  await killAll();
  for (const dir of tmpDirs) fs.rmSync(dir, { recursive: true, force: true });
}

after(cleanup);
process.on('exit', () => { for (const child of children) child.kill('SIGKILL'); });

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitReady(base, server, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (server.exitStatus !== undefined) {
      throw new Error(`crashgrid serve exited (${server.exitStatus}) before it was ready:\n${tail(server)}`);
    }
    try {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  throw new Error(`crashgrid serve not ready after ${timeoutMs} ms:\n${tail(server)}`);
}

function serve(port, dataDir) {
  return start('serve', [
    'serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--sink', 'none', '--in-app', 'libgame*', '--node-id', 'node-1',
  ]);
}

/** The integer shown by a `data-testid` element ("12,345" → 12345; "—" → 0). */
async function readInt(page, testid) {
  const text = await page.locator(`[data-testid="${testid}"]`).first().textContent();
  return Number(text.replace(/[^0-9]/g, '')) || 0;
}

// ------------------------------------------------------------------ the test

test('dashboard shows live statistics, group details, and reconnects', { timeout: 115_000 }, async (t) => {
  assert.ok(fs.existsSync(BIN), `no crashgrid binary at ${BIN}: run \`cargo build -p crashgrid\` or set CRASHGRID_BIN`);
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install -y chromium, or set CHROMIUM_PATH`);
  fs.mkdirSync(SHOTS, { recursive: true });

  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'crashgrid-browser-'));
  tmpDirs.push(dataDir);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;

  let server = serve(port, dataDir);
  await waitReady(base, server);

  const loadgenStarted = Date.now();
  const loadgen = start('loadgen', ['loadgen', '--url', base, '--rate', '200', '--duration', '60']);

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(base, { waitUntil: 'domcontentloaded' });

  const connection = page.getByTestId('connection');

  await t.test('connects and shows the node', async () => {
    await page.waitForSelector('[data-testid="connection"][data-state="live"]', { timeout: 10_000 });
    assert.match(await connection.textContent(), /live/);
    assert.equal(await page.getByTestId('node-name').textContent(), 'node-1');
  });

  await t.test('the total rises as crashes arrive', async () => {
    const before = await readInt(page, 'total');
    try {
      await page.waitForFunction((n) => Number(document.querySelector('[data-testid="total"]').textContent.replace(/[^0-9]/g, '')) > n,
        before, { timeout: 20_000, polling: 250 });
    } catch (e) {
      throw new Error(`total stayed at ${before}; loadgen ${loadgen.exitStatus ?? 'running'}:\n${tail(loadgen)}\nserver:\n${tail(server)}`);
    }
    assert.ok((await readInt(page, 'total')) > before);
    assert.ok((await readInt(page, 'processed')) > 0);
  });

  await t.test('the rate chart is redrawn', async () => {
    const line = page.locator('#rate-line');
    const first = await line.getAttribute('d');
    assert.match(first, /^M[\d.]+ [\d.]+(L[\d.]+ [\d.]+)+$/);
    assert.ok(first.split('L').length >= 100, 'the chart plots the whole window');
    await page.waitForFunction((d) => document.querySelector('#rate-line')?.getAttribute('d') !== d, first, { timeout: 5_000 });
    assert.notEqual(await line.getAttribute('d'), first);
  });

  await t.test('breakdowns, backlog and cluster are shown', async () => {
    for (const dim of ['app_version', 'os_version', 'device_model', 'exception_type', 'platform']) {
      const bars = page.locator(`[data-testid="breakdown-${dim}"] [data-testid="breakdown-bar"]`);
      assert.ok((await bars.count()) >= 1, `${dim} has bars`);
      const width = await bars.first().locator('.bar-fill').evaluate((el) => el.getBoundingClientRect().width);
      assert.ok(width > 0, `${dim}: the first bar is drawn`);
    }
    // Percentiles appear once something has been symbolicated.
    await page.waitForFunction(() => /\d/.test(document.querySelector('[data-testid="symb-p99"]').textContent), null, { timeout: 10_000 });
    assert.match(await page.getByTestId('backlog-unacked').textContent(), /^\d[\d,]*$/);
    assert.match(await page.getByTestId('backlog-oldest').textContent(), /^(none|\d.*(ms|s|min))$/);
    for (const id of ['backlog-avg', 'symb-p50', 'symb-p95', 'symb-p99']) {
      assert.match(await page.getByTestId(id).textContent(), /^\d[\d.]* (µs|ms|s)$/, id);
    }
    const members = page.getByTestId('cluster-member');
    assert.ok((await members.count()) >= 1);
    assert.equal(await page.locator('[data-testid="cluster-member"][data-leader="true"] [data-testid="leader-badge"]').count(), 1);
    assert.match(await page.getByTestId('cluster-epoch').textContent(), /^\d+$/);
    assert.match(await members.first().textContent(), new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.match(await page.getByTestId('cluster-lease').textContent(), /^(single node \(no lease\)|lease \d)/);
    assert.equal(await page.locator('[data-testid="cluster-member"] .badge.self').count(), 1);
  });

  await t.test('a click on a group shows its symbolicated stack', async () => {
    const row = page.getByTestId('group-row').first();
    await row.waitFor({ timeout: 10_000 });
    const id = await row.getAttribute('data-group-id');
    const title = await row.getByTestId('group-title').textContent();
    await row.click();
    const drawer = page.getByTestId('group-detail');
    await drawer.waitFor({ state: 'visible', timeout: 5_000 });
    assert.equal(new URL(page.url()).hash, `#/groups/${id}`);
    const frames = drawer.getByTestId('stack-frame');
    await frames.first().waitFor({ timeout: 10_000 });
    assert.equal(await page.getByTestId('detail-title').textContent(), title);
    assert.match(await page.getByTestId('detail-count').textContent(), /^\d[\d,]*$/);

    const symbolicated = drawer.locator('[data-testid="stack-frame"][data-status="symbolicated"]');
    assert.ok((await symbolicated.count()) >= 1, 'at least one symbolicated frame');
    const fn = await symbolicated.first().getByTestId('frame-function').textContent();
    assert.match(fn, /[A-Za-z_]/, 'a function name');
    const locations = await drawer.getByTestId('frame-location').allTextContents();
    assert.ok(locations.some((l) => /^[^\s:]+:\d+$/.test(l)), `a file:line among ${JSON.stringify(locations)}`);
    const packages = await drawer.getByTestId('frame-package').allTextContents();
    assert.ok(packages.length >= 1, 'frames name their module');
    const inlined = drawer.locator('[data-testid="stack-frame"][data-inlined="true"]');
    assert.equal(await inlined.locator('[data-testid="frame-inlined"]').count(), await inlined.count(), 'inlined frames are marked');
    await page.waitForTimeout(300); // let the drawer's slide-in finish
    await page.screenshot({ path: path.join(SHOTS, 'group.png') });

    await page.keyboard.press('Escape');
    await drawer.waitFor({ state: 'hidden', timeout: 5_000 });
    assert.equal(new URL(page.url()).hash, '');
  });

  // A screenshot worth looking at: let some history build up in the chart first.
  await page.waitForTimeout(Math.max(0, loadgenStarted + 20_000 - Date.now()));
  await page.screenshot({ path: path.join(SHOTS, 'dashboard.png'), fullPage: true });

  await t.test('reconnects by itself after the node is killed and restarted', async () => {
    server.kill('SIGKILL');
    await server.exited;
    await page.waitForSelector('[data-testid="connection"][data-state="reconnecting"]', { timeout: 8_000 });
    assert.match(await connection.textContent(), /reconnecting…/);

    server = serve(port, dataDir);
    await waitReady(base, server);
    await page.waitForSelector('[data-testid="connection"][data-state="live"]', { timeout: 20_000 });
    assert.match(await connection.textContent(), /live/);
    assert.equal(await page.getByTestId('node-name').textContent(), 'node-1');
  });

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
});
