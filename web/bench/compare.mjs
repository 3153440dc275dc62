// One run, one machine: the page's step time for the tiny and small presets on the
// browser's WebGPU (headless Chromium: SwiftShader without a GPU), the same networks in
// TensorFlow.js's WebGPU backend in the same browser, and the native binary's `bench` on
// this machine's Vulkan (llvmpipe without a GPU). Prints a Markdown table.
// Environment: DENSENET_BIN, CHROMIUM, BATCH (32), STEPS (5).
import { execFileSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { serve } from '../tests/serve.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = resolve(repo, process.env.DENSENET_BIN || 'target/release/densenet-wgpu');
const BATCH = Number(process.env.BATCH || 32);
const STEPS = Number(process.env.STEPS || 5);
setTimeout(() => { console.log('compare: past its 20-minute deadline'); process.exit(2); }, 1_200_000).unref();

const server = await serve({ '/': resolve(repo, 'web') });
const browser = await puppeteer.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true, args: ['--no-sandbox', '--enable-unsafe-webgpu'] });
const rows = [];
try {
  for (const preset of ['tiny', 'small']) {
    const page = await browser.newPage();
    await page.goto(`${server.url}/www/?limit_train=${BATCH * (STEPS + 2)}&limit_test=${BATCH}`);
    await page.waitForFunction(() => document.body.dataset.state === 'ready', { timeout: 120_000 });
    const ours = await page.evaluate(async (preset, batch, steps) => {
      const e = window.app.engine;
      e.use_synthetic(0);
      const run = JSON.parse(e.start(JSON.stringify({ preset, batch_size: batch, epochs: 1 })));
      for (let i = 0; i < 2; i++) await e.train(1);
      const t0 = performance.now();
      for (let i = 0; i < steps; i++) await e.train(1);
      return { ms_per_step: (performance.now() - t0) / steps, parameters: run.parameters };
    }, preset, BATCH, STEPS);
    await page.close();
    const tf = await browser.newPage();
    await tf.goto(`${server.url}/bench/tfjs.html`);
    const peer = await tf.evaluate((p, b, s) => window.timeTfjs(p, b, s), preset, BATCH, STEPS);
    await tf.close();
    const native = execFileSync(BIN, ['bench', '--preset', preset, '--batch-size', String(BATCH), '--steps', String(STEPS)],
      { encoding: 'utf8', timeout: 600_000, stdio: ['ignore', 'pipe', 'pipe'] });
    const m = native.match(/([0-9.]+) ms per training step/);
    rows.push({ preset, ours, peer, native: m ? Number(m[1]) : NaN, native_text: native.trim().split('\n').slice(-3).join(' | ') });
    console.log(JSON.stringify(rows[rows.length - 1]));
  }
} finally {
  await browser.close();
  server.close();
}
console.log(`\n| preset (batch ${BATCH}) | parameters (ours / TF.js) | page on SwiftShader | TF.js WebGPU on SwiftShader | page / TF.js | native on llvmpipe |`);
console.log('|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.preset} | ${r.ours.parameters} / ${r.peer.parameters} | ${r.ours.ms_per_step.toFixed(0)} ms | ` +
    `${r.peer.ms_per_step.toFixed(0)} ms (${r.peer.backend}) | ${(r.ours.ms_per_step / r.peer.ms_per_step).toFixed(2)} | ${isNaN(r.native) ? '?' : r.native.toFixed(0) + ' ms'} |`);
}
