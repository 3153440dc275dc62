// The page: data and settings in, the wasm Engine (web/src/lib.rs) trains, and the page
// draws progress between its slices of a few steps. URL parameters: limits=webgpu (the
// WebGPU defaults instead of the adapter's limits), kernels=SPEC (as the CLI's --kernels),
// limit_train=N and limit_test=N (the
// first N examples only, as the CLI's --limit-train/--limit-test).
import init, { Engine } from './pkg/densenet_web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const app = {
  engine: null,
  running: false,
  run: null,        // the summary of the current run
  history: [],      // {step, loss, accuracy} per slice
  epochs: [],       // {epoch, train_loss, train_acc, test_loss, test_acc}
  trained: { images: 0, seconds: 0 },
  firstStepMs: null,
  loadedAt: performance.now(),
};
window.app = app;

function showError(e) {
  const msg = String(e && e.message ? e.message : e).split('\n')[0];
  $('error').textContent = msg;
  $('error').hidden = false;
  console.error(msg);
}
function clearError() { $('error').hidden = true; $('error').textContent = ''; }
function setState(s) { document.body.dataset.state = s; }

async function main() {
  try {
    await init();
    if (!navigator.gpu) {
      throw new Error('this browser has no WebGPU (navigator.gpu is missing): use Chrome or Edge 113+, Safari 26 or Firefox 141+, or enable WebGPU');
    }
    app.engine = await Engine.create(params.get('limits') || 'adapter', params.get('kernels') || 'auto');
    const a = JSON.parse(app.engine.adapter());
    app.adapter = a;
    $('adapter').textContent = `Adapter: ${a.name || 'unnamed'} (${a.backend}${a.software ? ', software' : ''}); ` +
      `f16 ${a.f16 ? 'yes' : 'no'}, subgroups ${a.subgroups ? 'yes' : 'no'}; kernels ${a.kernels}.`;
    if (a.f16) $('precision').add(new Option('f16', 'f16'));
    app.engine.limit(Number(params.get('limit_train') || 0), Number(params.get('limit_test') || 0));
    $('start').disabled = false;
    setState('ready');
  } catch (e) {
    showError(e);
    setState('error');
  }
}

// ---- data ----------------------------------------------------------------------------

let pending = { kind: 'synthetic' };   // what "Train" will load

async function readFiles(files, pathOf) {
  const names = [], blobs = [];
  for (const f of files) {
    names.push(pathOf(f));
    blobs.push(new Uint8Array(await f.arrayBuffer()));
  }
  return { names, blobs };
}

function chooseData() {
  const kind = document.querySelector('input[name=data]:checked').value;
  if (kind === 'synthetic') {
    app.engine.use_synthetic(Number($('seed').value) || 0);
  } else if (kind === 'idx') {
    if (!pending.idx) throw new Error('choose the four IDX files first');
    app.engine.use_idx($('idx-kind').value, pending.idx.names, pending.idx.blobs);
  } else {
    if (!pending.folder) throw new Error('choose a folder of class subfolders first');
    app.engine.use_folder(pending.folder.names, pending.folder.blobs);
  }
}

$('idx-files').addEventListener('change', async (ev) => {
  pending.idx = await readFiles(ev.target.files, (f) => f.name);
  document.querySelector('input[value=idx]').checked = true;
});
$('folder-files').addEventListener('change', async (ev) => {
  pending.folder = await readFiles(ev.target.files, (f) => f.webkitRelativePath || f.name);
  document.querySelector('input[value=folder]').checked = true;
});

// Dropped files: IDX files, a folder, a checkpoint, or an image to classify.
async function entryFiles(entry, path, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push({ file, path: path + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const e of batch) await entryFiles(e, path + entry.name + '/', out);
    }
  }
}
document.addEventListener('dragover', (ev) => ev.preventDefault());
document.addEventListener('drop', async (ev) => {
  ev.preventDefault();
  clearError();
  try {
    const entries = [...ev.dataTransfer.items].map((i) => i.webkitGetAsEntry()).filter(Boolean);
    const found = [];
    for (const e of entries) await entryFiles(e, '', found);
    const names = found.map((f) => f.path);
    if (entries.some((e) => e.isDirectory)) {
      pending.folder = await readFiles(found.map((f) => f.file), (f) => found.find((x) => x.file === f).path);
      document.querySelector('input[value=folder]').checked = true;
    } else if (names.some((n) => /idx[13]-ubyte(\.gz)?$/.test(n))) {
      pending.idx = await readFiles(found.map((f) => f.file), (f) => f.name);
      document.querySelector('input[value=idx]').checked = true;
    } else if (names.length === 1 && /\.safetensors$/.test(names[0])) {
      await loadCheckpoint(found[0].file);
    } else if (names.length === 1 && /\.(png|jpe?g)$/i.test(names[0])) {
      await predictFile(found[0].file);
    } else {
      throw new Error(`${names.join(', ')}: drop the four IDX files, a folder of class folders, a .safetensors checkpoint or a PNG/JPEG image`);
    }
  } catch (e) { showError(e); }
});

// ---- training ------------------------------------------------------------------------

function settings() {
  const num = (id) => ($(id).value === '' ? undefined : Number($(id).value));
  return {
    preset: $('preset').value,
    batch_size: num('batch'),
    epochs: num('epochs'),
    lr: num('lr'),
    seed: num('seed') || 0,
    precision: $('precision').value,
  };
}

function afterLoad(summary) {
  app.run = JSON.parse(summary);
  app.history = [];
  app.epochs = [];
  app.trained = { images: 0, seconds: 0 };
  const r = app.run, d = r.data;
  $('status').textContent = `${r.network}: ${r.parameters.toLocaleString()} parameters, ${d.dataset} ` +
    `(${d.train} train / ${d.test} test, ${d.classes.length} classes, ${d.size}×${d.size}), batch ${r.batch_size}, ` +
    `${r.precision}, plan memory ${r.memory_mib.toFixed(1)} MiB; ${r.epochs_done}/${r.epochs} epochs done.`;
  for (const id of ['evaluate', 'predict-drawing', 'pause']) $(id).disabled = false;
  $('download').disabled = false;
  $('pause').textContent = 'Pause';
  drawCharts();
}

async function start(overrides = {}) {
  clearError();
  try {
    app.running = false;
    chooseData();
    const s = { ...settings(), ...overrides };
    // The form shows what runs, whoever chose it (a test, a script).
    const fields = { preset: 'preset', batch_size: 'batch', epochs: 'epochs', lr: 'lr', seed: 'seed' };
    for (const [key, id] of Object.entries(fields)) if (s[key] !== undefined) $(id).value = s[key];
    afterLoad(app.engine.start(JSON.stringify(s)));
    await resume();
  } catch (e) { showError(e); setState('ready'); }
}

// Steps per slice: as many as take about a quarter of a second, so the page stays lively.
let sliceSteps = 1;

async function resume() {
  if (!app.run) return;
  app.running = true;
  setState('training');
  $('pause').textContent = 'Pause';
  try {
    while (app.running) {
      const t0 = performance.now();
      const p = JSON.parse(await app.engine.train(sliceSteps));
      const dt = (performance.now() - t0) / 1000;
      if (app.firstStepMs === null) app.firstStepMs = performance.now() - app.loadedAt;
      app.trained.images += p.steps * p.batch_size;
      app.trained.seconds += dt;
      sliceSteps = Math.max(1, Math.min(64, Math.round(sliceSteps * (dt < 0.25 ? 2 : dt > 1 ? 0.5 : 1))));
      app.history.push({ step: p.step, loss: p.loss, accuracy: p.accuracy });
      showProgress(p);
      if (p.epoch_done) {
        const e = await evaluate(false);
        app.epochs.push({ epoch: p.epoch, step: p.step, train_loss: p.loss, train_acc: p.accuracy,
                          test_loss: e.loss, test_acc: e.accuracy });
        drawCharts();
      }
      if (p.finished) {
        app.running = false;
        setState('done');
        $('pause').disabled = true;
        return;
      }
    }
    setState('paused');
  } catch (e) {
    app.running = false;
    showError(e);
    setState('error');
  }
}

function showProgress(p) {
  const ips = app.trained.images / Math.max(app.trained.seconds, 1e-9);
  const left = (p.epochs - p.epoch) * p.batches + (p.batches - p.batch);
  const eta = (left * p.batch_size) / Math.max(ips, 1e-9);
  $('status').textContent = `epoch ${p.epoch}/${p.epochs}, batch ${p.batch}/${p.batches} (step ${p.step}): ` +
    `train loss ${p.loss.toFixed(4)}, accuracy ${(100 * p.accuracy).toFixed(2)}%, lr ${p.lr.toPrecision(3)}; ` +
    `${ips.toFixed(1)} images/s, ETA ${formatTime(eta)}`;
  drawCharts();
}

function formatTime(s) {
  if (!isFinite(s)) return '?';
  const m = Math.floor(s / 60);
  return m > 0 ? `${m} min ${Math.round(s % 60)} s` : `${s.toFixed(0)} s`;
}

async function evaluate(logits) {
  const e = JSON.parse(await app.engine.evaluate(logits));
  const body = $('classes').querySelector('tbody');
  body.innerHTML = '';
  e.classes.forEach((name, i) => {
    const tr = body.insertRow();
    tr.insertCell().textContent = name;
    const acc = e.per_class[i];
    tr.insertCell().textContent = acc === null || isNaN(acc) ? '–' : `${(100 * acc).toFixed(2)}%`;
  });
  $('classes').hidden = false;
  $('status').dataset.test = `test loss ${e.loss.toFixed(4)}, accuracy ${(100 * e.accuracy).toFixed(2)}% on ${e.examples} examples`;
  $('classes').querySelector('th:last-child').textContent = `test accuracy (all: ${(100 * e.accuracy).toFixed(2)}%, loss ${e.loss.toFixed(4)})`;
  return e;
}

$('start').addEventListener('click', () => start());
$('pause').addEventListener('click', () => {
  if (app.running) { app.running = false; $('pause').textContent = 'Resume'; }
  else { resume(); }
});
$('evaluate').addEventListener('click', async () => {
  clearError();
  if (app.running) { showError('pause the training first'); return; }
  try { await evaluate(false); } catch (e) { showError(e); }
});

// ---- checkpoints ---------------------------------------------------------------------

$('download').addEventListener('click', async () => {
  clearError();
  try {
    const bytes = await app.engine.checkpoint();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    a.download = 'checkpoint.safetensors';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { showError(e); }
});

async function loadCheckpoint(file) {
  clearError();
  app.running = false;
  try {
    chooseData();
    const bytes = new Uint8Array(await file.arrayBuffer());
    afterLoad(app.engine.load_checkpoint(bytes, file.name));
    setState('loaded');
  } catch (e) { showError(e); setState('ready'); }
}
$('load').addEventListener('change', (ev) => { if (ev.target.files[0]) loadCheckpoint(ev.target.files[0]); ev.target.value = ''; });

// ---- prediction ----------------------------------------------------------------------

function showPrediction(json) {
  const p = JSON.parse(json);
  const list = $('prediction');
  list.innerHTML = '';
  for (const [name, prob] of p.classes.slice(0, 3)) {
    list.appendChild(document.createElement('li')).textContent = `${name}: ${(100 * prob).toFixed(1)}%`;
  }
  return p;
}
async function predictFile(file) {
  clearError();
  try { return showPrediction(await app.engine.predict_file(new Uint8Array(await file.arrayBuffer()), file.name)); }
  catch (e) { showError(e); }
}
$('predict-file').addEventListener('change', (ev) => { if (ev.target.files[0]) predictFile(ev.target.files[0]); });

const draw = $('draw'), pen = draw.getContext('2d');
function clearDrawing() { pen.fillStyle = '#000'; pen.fillRect(0, 0, draw.width, draw.height); }
clearDrawing();
let drawing = false;
draw.addEventListener('pointerdown', (ev) => { drawing = true; stroke(ev); });
draw.addEventListener('pointermove', (ev) => drawing && stroke(ev));
window.addEventListener('pointerup', () => { drawing = false; });
function stroke(ev) {
  const r = draw.getBoundingClientRect();
  pen.fillStyle = '#fff';
  pen.beginPath();
  pen.arc(ev.clientX - r.left, ev.clientY - r.top, 9, 0, 2 * Math.PI);
  pen.fill();
}
$('clear').addEventListener('click', clearDrawing);
$('predict-drawing').addEventListener('click', async () => {
  clearError();
  try {
    const px = pen.getImageData(0, 0, draw.width, draw.height);
    showPrediction(await app.engine.predict_pixels(new Uint8Array(px.data.buffer), draw.width, draw.height));
  } catch (e) { showError(e); }
});

// ---- charts --------------------------------------------------------------------------

function chart(canvas, series, points, yMax) {
  const g = canvas.getContext('2d'), W = canvas.width, H = canvas.height, pad = 32;
  g.clearRect(0, 0, W, H);
  g.strokeStyle = '#ccd'; g.fillStyle = '#556'; g.font = '11px sans-serif';
  g.strokeRect(pad, 8, W - pad - 8, H - pad - 8);
  const xs = series.map((p) => p.x).concat(points.map((p) => p.x));
  const xMax = Math.max(1, ...xs);
  const X = (x) => pad + (x / xMax) * (W - pad - 8);
  const Y = (y) => 8 + (1 - Math.min(y, yMax) / yMax) * (H - pad - 8);
  g.fillText(yMax.toPrecision(2), 2, 14); g.fillText('0', 2, H - pad);
  g.fillText(`step ${xMax}`, W - 60, H - 10);
  g.strokeStyle = '#2a5db0'; g.lineWidth = 1.5; g.beginPath();
  series.forEach((p, i) => (i ? g.lineTo(X(p.x), Y(p.y)) : g.moveTo(X(p.x), Y(p.y))));
  g.stroke();
  g.fillStyle = '#d0452f';
  for (const p of points) { g.beginPath(); g.arc(X(p.x), Y(p.y), 3.5, 0, 2 * Math.PI); g.fill(); }
}
function drawCharts() {
  const maxLoss = Math.max(0.1, ...app.history.map((p) => p.loss), ...app.epochs.map((e) => e.test_loss));
  chart($('loss-chart'), app.history.map((p) => ({ x: p.step, y: p.loss })),
        app.epochs.map((e) => ({ x: e.step, y: e.test_loss })), maxLoss);
  chart($('acc-chart'), app.history.map((p) => ({ x: p.step, y: p.accuracy })),
        app.epochs.map((e) => ({ x: e.step, y: e.test_acc })), 1);
}

Object.assign(app, { start, resume, evaluate, loadCheckpoint, predictFile, showError });
main();
