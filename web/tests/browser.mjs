// The page in a real browser: Debian's Chromium, headless, on its WebGPU (SwiftShader where
// there is no GPU), driven through the DevTools protocol by puppeteer-core. Checks that the
// page trains (the loss falls), that its logits equal the native binary's for the same
// checkpoint, that checkpoints move both ways, and that a bad file gives one error line.
// Prints `N passed, N failed`, writes a screenshot and a JSON report under OUT, and can
// never hang: every case has a deadline, the whole run has one, and the browser is killed.
//
// Environment: DENSENET_BIN (the native binary; default target/release/densenet-wgpu),
// CHROMIUM (default /usr/bin/chromium), OUT (default target/web-test), LIMIT_TRAIN /
// LIMIT_TEST / BATCH / EPOCHS (the page's run; defaults 256 / 200 / 32 / 2).
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { serve } from './serve.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const BIN = resolve(repo, process.env.DENSENET_BIN || 'target/release/densenet-wgpu');
const OUT = resolve(repo, process.env.OUT || 'target/web-test');
const LIMIT_TRAIN = Number(process.env.LIMIT_TRAIN || 256);
const LIMIT_TEST = Number(process.env.LIMIT_TEST || 200);
const BATCH = Number(process.env.BATCH || 32);
const EPOCHS = Number(process.env.EPOCHS || 2);
const TOTAL_DEADLINE_S = Number(process.env.DEADLINE_S || 1500);
const TOLERANCE = 1e-4;

rmSync(OUT, { recursive: true, force: true });
mkdirSync(join(OUT, 'downloads'), { recursive: true });

let browser = null;
function killBrowser() {
  const proc = browser && browser.process();
  if (proc && proc.exitCode === null) proc.kill('SIGKILL');
}
// The run's own deadline: whatever hangs, the browser dies and the run fails.
setTimeout(() => {
  console.log(`FAILED: the whole run passed its ${TOTAL_DEADLINE_S} s deadline`);
  killBrowser();
  process.exit(2);
}, TOTAL_DEADLINE_S * 1000).unref();
process.on('exit', killBrowser);

const results = [];
const report = {};
function deadline(promise, seconds, what) {
  let timer;
  const late = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`${what}: no answer within ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
async function check(name, seconds, fn) {
  const t0 = Date.now();
  try {
    const detail = await deadline(fn(), seconds, name);
    results.push({ name, ok: true });
    console.log(`ok     ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)${detail ? ': ' + detail : ''}`);
  } catch (e) {
    results.push({ name, ok: false, error: String(e.message || e) });
    console.log(`FAILED ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${String(e.message || e).split('\n')[0]}`);
  }
}
function cli(args) {
  return execFileSync(BIN, args, { encoding: 'utf8', timeout: 300_000, stdio: ['ignore', 'pipe', 'pipe'] });
}
function csvLogits(path) {
  return readFileSync(path, 'utf8').trim().split('\n').slice(1)
    .flatMap((row) => row.split(',').slice(1).map(Number));
}
/** max |a - b| / max(|b|, 1) over all values: the logits' difference relative to their size. */
function difference(a, b) {
  if (a.length !== b.length) throw new Error(`${a.length} logits against ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), 1));
  return worst;
}
function cliAccuracy(text) {
  const m = text.match(/acc ([0-9.]+)%/);
  if (!m) throw new Error(`no accuracy in the CLI's output: ${text.slice(0, 200)}`);
  return Number(m[1]);
}
const waitState = (page, states, seconds) => page.waitForFunction(
  (s) => s.includes(document.body.dataset.state), { timeout: seconds * 1000, polling: 200 }, states);
const errorLine = (page) => page.$eval('#error', (e) => (e.hidden ? '' : e.textContent));

const server = await serve({ '/': join(repo, 'web/www') });
const query = `?limit_train=${LIMIT_TRAIN}&limit_test=${LIMIT_TEST}`;
let page;
try {
  browser = await deadline(puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--window-size=1000,1400'],
  }), 60, 'starting Chromium');
  page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 1400 });
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  page: ${m.text()}`); });
  const cdp = await page.createCDPSession();
  await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: join(OUT, 'downloads') });

  await check('the page opens a WebGPU adapter', 120, async () => {
    const t0 = Date.now();
    await page.goto(server.url + '/' + query);
    await waitState(page, ['ready', 'error'], 110);
    const err = await errorLine(page);
    if (err) throw new Error(err);
    report.load_s = (Date.now() - t0) / 1000;
    report.adapter = await page.evaluate(() => window.app.adapter);
    return `${report.adapter.name || 'unnamed'} (${report.adapter.backend}), ready in ${report.load_s.toFixed(1)} s`;
  });

  await check(`tiny on synthetic trains: ${EPOCHS} epochs of ${LIMIT_TRAIN / BATCH} steps, the loss falls`, 900, async () => {
    const t0 = Date.now();
    await page.evaluate((o) => { window.app.start(o); }, { preset: 'tiny', batch_size: BATCH, epochs: EPOCHS, seed: 0 });
    await waitState(page, ['done', 'error'], 880);
    const err = await errorLine(page);
    if (err) throw new Error(err);
    const s = await page.evaluate(() => ({ epochs: window.app.epochs, trained: window.app.trained,
      firstStepMs: window.app.firstStepMs }));
    report.train = s;
    report.train_wall_s = (Date.now() - t0) / 1000;
    report.step_ms = (1000 * s.trained.seconds) / (s.trained.images / BATCH);
    const [first, last] = [s.epochs[0], s.epochs[s.epochs.length - 1]];
    if (!(last.train_loss < first.train_loss)) {
      throw new Error(`train loss ${first.train_loss} -> ${last.train_loss}: it did not fall`);
    }
    await page.screenshot({ path: join(OUT, 'screenshot.png'), fullPage: true });
    return `train loss ${first.train_loss.toFixed(4)} -> ${last.train_loss.toFixed(4)}, test accuracy ` +
      `${(100 * last.test_acc).toFixed(2)}%; ${report.step_ms.toFixed(0)} ms per step of ${BATCH}`;
  });

  await check('the page\'s checkpoint: the CLI evaluates it to the page\'s accuracy and logits', 300, async () => {
    const e = await page.evaluate(async () => window.app.evaluate(true));
    await page.click('#download');
    const dir = join(OUT, 'downloads');
    const file = await deadline((async () => {
      for (;;) {
        const done = readdirSync(dir).find((f) => f.endsWith('.safetensors'));
        if (done) return join(dir, done);
        await new Promise((ok) => setTimeout(ok, 200));
      }
    })(), 60, 'the download');
    const out = cli(['eval', '--checkpoint', file, '--dataset', 'synthetic', '--limit-test', String(LIMIT_TEST),
      '--logits', join(OUT, 'page-ckpt-cli-logits.csv'), '--confusion', join(OUT, 'confusion.png')]);
    const acc = cliAccuracy(out);
    const diff = difference(e.logits, csvLogits(join(OUT, 'page-ckpt-cli-logits.csv')));
    report.page_checkpoint = { page_accuracy: e.accuracy, cli_accuracy: acc / 100, logit_difference: diff };
    if (Math.abs(100 * e.accuracy - acc) > 1e-9) throw new Error(`page ${100 * e.accuracy}% but CLI ${acc}%`);
    if (!(diff <= TOLERANCE)) throw new Error(`logits differ by ${diff.toExponential(2)} (relative), more than ${TOLERANCE}`);
    return `accuracy ${acc}% both; logits within ${diff.toExponential(2)}`;
  });

  await check('a CLI checkpoint loads into the page with the CLI\'s logits', 300, async () => {
    const run = join(OUT, 'cli-run');
    cli(['train', '--preset', 'tiny', '--dataset', 'synthetic', '--epochs', '1', '--batch-size', String(BATCH),
      '--limit-train', String(LIMIT_TRAIN), '--limit-test', String(LIMIT_TEST), '--seed', '3', '--out', run]);
    const ckpt = join(run, 'checkpoint.safetensors');
    const out = cli(['eval', '--checkpoint', ckpt, '--dataset', 'synthetic', '--limit-test', String(LIMIT_TEST),
      '--logits', join(OUT, 'cli-logits.csv'), '--confusion', join(OUT, 'cli-confusion.png')]);
    const input = await page.$('#load');
    await input.uploadFile(ckpt);
    await waitState(page, ['loaded', 'ready', 'error'], 60);
    const err = await errorLine(page);
    if (err) throw new Error(err);
    const e = await page.evaluate(async () => window.app.evaluate(true));
    const diff = difference(e.logits, csvLogits(join(OUT, 'cli-logits.csv')));
    report.cli_checkpoint = { page_accuracy: e.accuracy, cli_accuracy: cliAccuracy(out) / 100, logit_difference: diff };
    if (!(diff <= TOLERANCE)) throw new Error(`logits differ by ${diff.toExponential(2)} (relative), more than ${TOLERANCE}`);
    return `accuracy ${(100 * e.accuracy).toFixed(2)}% (CLI ${cliAccuracy(out)}%); logits within ${diff.toExponential(2)}`;
  });

  await check('the loaded checkpoint predicts a drawing', 120, async () => {
    await page.click('#predict-drawing');
    await page.waitForFunction(() => document.querySelectorAll('#prediction li').length === 3
      || !document.getElementById('error').hidden, { timeout: 100_000 });
    const err = await errorLine(page);
    if (err) throw new Error(err);
    return (await page.$$eval('#prediction li', (l) => l.map((x) => x.textContent))).join('; ');
  });

  await check('a file that is not a checkpoint gives one error line', 60, async () => {
    const bad = join(OUT, 'not-a-checkpoint.safetensors');
    writeFileSync(bad, 'this is not a safetensors file');
    await (await page.$('#load')).uploadFile(bad);
    await page.waitForFunction(() => !document.getElementById('error').hidden, { timeout: 50_000 });
    const line = await errorLine(page);
    if (!line.includes('not-a-checkpoint.safetensors') || !line.includes('not a safetensors file') || line.includes('\n')) {
      throw new Error(`the error line was ${JSON.stringify(line)}`);
    }
    return JSON.stringify(line);
  });
} catch (e) {
  results.push({ name: 'the browser session', ok: false, error: String(e.message || e) });
  console.log(`FAILED the browser session: ${e.message || e}`);
} finally {
  killBrowser();
  server.close();
}

const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
report.results = results;
writeFileSync(join(OUT, 'report.json'), JSON.stringify(report, null, 2));
console.log(`screenshot: ${join(OUT, 'screenshot.png')}; report: ${join(OUT, 'report.json')}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
