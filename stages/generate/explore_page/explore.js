// The explorer page: every control change asks the server for PNGs (GET /api/image); nothing is drawn here.
// Each image slot keeps at most one request in flight and asks for the latest settings when it returns, so a
// slider dragged fast costs a few renders, not one per pixel of travel.
'use strict';

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const MAX_SEED = 4294967295;

const state = {
  info: null, seed: 0, step: 1, psi: 1, cutoff: '', cls: 0, noise: 'const', fft: false,
  tx: 0, ty: 0, rot: 0, snaps: [], seed2: 1, t: 0, playing: false, loopRun: 0, dir: 1, mixOpen: false, stripOpen: false,
};
const slots = new Map();   // id -> {img, caption, want, shown, inflight, url}
const timings = [];        // recent round trips (ms), for the header

// ------------------------------------------------------------------------------------------------
// image slots

function makeSlot(id, label) {
  const img = el('img', {id, alt: label, 'data-status': 'empty'});
  const caption = el('figcaption', {class: 'caption', text: label});
  const figure = el('figure', {class: 'slot'}, img, caption);
  slots.set(id, {img, caption, label, want: null, shown: null, inflight: false, url: null});
  return figure;
}

function dropSlots(prefix) {
  for (const [id, s] of slots) {
    if (id.startsWith(prefix)) {
      if (s.url) URL.revokeObjectURL(s.url);
      slots.delete(id);
    }
  }
}

function request(id, params) {
  const s = slots.get(id);
  if (!s) return;
  s.want = new URLSearchParams(params).toString();
  pump(s);
}

async function fetchImage(query) {
  for (let attempt = 0; ; attempt++) {  // 503: the server's queue is full; it says to retry shortly
    const resp = await fetch('/api/image?' + query, {cache: 'no-store'});
    if (resp.status === 503 && attempt < 8) {
      await sleep(100 * (attempt + 1));
      continue;
    }
    return resp;
  }
}

async function pump(s) {
  if (s.inflight || s.want === null || s.want === s.shown) return;
  const query = s.want;
  s.inflight = true;
  s.img.dataset.status = 'loading';
  const t0 = performance.now();
  try {
    const resp = await fetchImage(query);
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({error: resp.statusText}));
      throw new Error(`${resp.status}: ${body.error}`);
    }
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    s.img.src = url;
    await s.img.decode();
    if (s.url) URL.revokeObjectURL(s.url);
    s.url = url;
    const rtt = performance.now() - t0;
    timings.push(rtt);
    if (timings.length > 20) timings.shift();
    const render = parseFloat(resp.headers.get('X-Render-Ms') || '0');
    const batch = resp.headers.get('X-Batch-Size') || '1';
    s.caption.textContent = `${s.label} · render ${render.toFixed(1)} ms (batch ${batch}) · ${rtt.toFixed(0)} ms`;
    s.caption.classList.remove('error');
    s.img.dataset.status = 'ready';
  } catch (err) {
    s.caption.textContent = `${s.label} · ${err.message}`;
    s.caption.classList.add('error');
    s.img.dataset.status = 'error';
  } finally {
    s.shown = query;
    s.img.dataset.query = query;
    s.inflight = false;
    updateStatus();
    if (s.want !== s.shown) pump(s);
  }
}

function updateStatus() {
  const busy = [...slots.values()].filter((s) => s.inflight).length;
  const mean = timings.length ? timings.reduce((a, b) => a + b, 0) / timings.length : 0;
  $('status').textContent = busy ? `rendering ${busy}…` : `ready · mean round trip ${mean.toFixed(0)} ms`;
}

// ------------------------------------------------------------------------------------------------
// what each network is asked for

function baseParams(net) {
  const m = state.info.networks[net];
  const f = m.features;
  const p = {net, seed: state.seed, psi: state.psi};
  if (m.kind === 'run') p.snap = state.snaps[net];
  if (f.cutoff && state.cutoff !== '') p.cutoff = state.cutoff;
  if (m.c_dim > 0) p.class = state.cls;
  if (f.noise) p.noise = state.noise;
  if (f.transform) Object.assign(p, {tx: state.tx, ty: state.ty, rot: state.rot});
  return p;
}

function shortName(source) {
  // a path as its last two parts (the run and the file); URIs and names as given
  if (source.includes(':/')) return source;
  const parts = source.replace(/\/+$/, '').split('/');
  return parts.slice(-2).join('/');
}

function networkLabel(m) {
  const letter = m.index === 0 ? 'A' : 'B';
  const snap = m.kind === 'run' ? ` · ${state.snaps[m.index].replace(/\.(safetensors|pkl)$/, '')}` : '';
  return `${letter}${snap}`;
}

function renderMain() {
  for (const m of state.info.networks) {
    const p = baseParams(m.index);
    if (state.fft) p.view = 'fft';
    const s = slots.get(`main-${m.index}`);
    s.label = networkLabel(m);
    s.img.parentElement.classList.toggle('wide', state.fft);
    request(`main-${m.index}`, p);
  }
}

function renderInterp() {
  $('interp-from').textContent = state.seed;
  for (const m of state.info.networks) {
    if (!m.features.interpolation) continue;
    request(`interp-${m.index}`, {...baseParams(m.index), seed2: state.seed2, t: state.t});
  }
}

function parseSeeds(text) {
  const seeds = [];
  for (const part of String(text).split(',')) {
    const range = part.trim().match(/^(\d+)-(\d+)$/);
    if (range) for (let s = +range[1]; s <= +range[2] && seeds.length < 64; s++) seeds.push(s);
    else if (/^\d+$/.test(part.trim())) seeds.push(+part.trim());
  }
  return seeds.filter((s) => s <= MAX_SEED).slice(0, state.info.limits.max_mix_seeds);
}

function buildMix() {
  dropSlots('mix-');
  const box = $('mix-grids');
  box.replaceChildren();
  if (!state.mixOpen) return;
  const rows = parseSeeds($('mix-rows').value);
  const cols = parseSeeds($('mix-cols').value);
  const lo = +$('mix-lo').value;
  const hi = +$('mix-hi').value;
  for (const m of state.info.networks) {
    if (!m.features.mixing) continue;
    const table = el('table', {class: 'mix', 'data-net': m.index});
    const head = el('tr', {}, el('td', {class: 'corner', text: networkLabel(m)}));
    cols.forEach((c, j) => head.append(el('td', {}, makeSlot(`mix-${m.index}-c${j}`, `col ${c}`))));
    table.append(head);
    rows.forEach((r, i) => {
      const tr = el('tr', {}, el('td', {}, makeSlot(`mix-${m.index}-r${i}`, `row ${r}`)));
      cols.forEach((c, j) => tr.append(el('td', {}, makeSlot(`mix-${m.index}-${i}-${j}`, `${r} + ${c}`))));
      table.append(tr);
    });
    box.append(table);
    const base = baseParams(m.index);
    const top = Math.min(hi, m.num_ws - 1);
    cols.forEach((c, j) => request(`mix-${m.index}-c${j}`, {...base, seed: c}));
    rows.forEach((r, i) => {
      request(`mix-${m.index}-r${i}`, {...base, seed: r});
      cols.forEach((c, j) => request(`mix-${m.index}-${i}-${j}`,
        {...base, seed: r, mix: c, mix_lo: Math.min(lo, top), mix_hi: top}));
    });
  }
  applyZoom();
}

function buildStrip() {
  dropSlots('strip-');
  const box = $('strip-rows');
  box.replaceChildren();
  if (!state.stripOpen) return;
  for (const m of state.info.networks) {
    if (m.kind !== 'run') continue;
    const names = m.snapshots.map((s) => s.name);
    const count = Math.min(names.length, 12);
    const picks = [...new Set(Array.from({length: count},
      (_, i) => names[Math.round(i * (names.length - 1) / Math.max(count - 1, 1))]))];
    const row = el('div', {class: 'row'});
    picks.forEach((name, i) => {
      const kimg = m.snapshots.find((s) => s.name === name).kimg;
      row.append(makeSlot(`strip-${m.index}-${i}`, `${kimg} kimg`));
    });
    box.append(el('p', {class: 'hint', text: `${m.index === 0 ? 'A' : 'B'}: ${shortName(m.source)}`}), row);
    picks.forEach((name, i) => request(`strip-${m.index}-${i}`, {...baseParams(m.index), snap: name}));
  }
  applyZoom();
}

function renderAll() {
  renderMain();
  renderInterp();
  buildMix();
  buildStrip();
}

// ------------------------------------------------------------------------------------------------
// controls

function bindPair(rangeId, numId, key, after) {
  const range = $(rangeId);
  const num = $(numId);
  const set = (value, from) => {
    const x = parseFloat(value);
    if (!Number.isFinite(x)) return;
    state[key] = x;
    if (from !== range) range.value = x;
    if (from !== num) num.value = x;
    after();
  };
  range.addEventListener('input', () => set(range.value, range));
  num.addEventListener('input', () => set(num.value, num));
  return set;
}

function setSeed(value) {
  if (value === '' || value === null) return;  // the field is being retyped
  let s = Math.trunc(Number(value));
  if (!Number.isFinite(s)) return;
  s = ((s % (MAX_SEED + 1)) + MAX_SEED + 1) % (MAX_SEED + 1);
  state.seed = s;
  if (String(s) !== $('seed').value) $('seed').value = s;
  renderAll();
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

function applyZoom() {
  document.documentElement.style.setProperty('--size', `${$('zoom').value}px`);
}

function setupControls() {
  const info = state.info;
  const d = info.defaults;
  state.seed = d.seed;
  state.seed2 = d.seed2;
  state.psi = d.psi;
  state.cutoff = d.cutoff === null ? '' : d.cutoff;
  state.noise = d.noise;
  state.snaps = info.networks.map((m) => m.snapshot);
  $('seed').value = state.seed;
  $('seed2').value = state.seed2;
  $('psi').value = $('psi-num').value = state.psi;
  $('cutoff').value = state.cutoff;
  $('noise').value = state.noise;
  $('mix-rows').value = d.mix_rows;
  $('mix-cols').value = d.mix_cols;
  const styles = String(d.mix_styles).split(/[-,]/).map(Number);
  $('mix-lo').value = Math.min(...styles);
  $('mix-hi').value = Math.max(...styles);

  // networks: label, family, snapshot picker for a run folder
  const list = $('network-list');
  for (const m of info.networks) {
    const row = el('div', {class: 'network'},
      el('div', {class: 'name', title: m.source, text: `${m.index === 0 ? 'A' : 'B'}: ${shortName(m.source)}`}),
      el('div', {class: 'hint', text: `${m.family} · ${m.resolution} px · ${m.c_dim ? m.c_dim + ' classes' : 'unconditional'} · ${m.num_ws || '-'} ws`}));
    if (m.kind === 'run') {
      const pick = el('select', {id: `snap-${m.index}`, 'aria-label': `snapshot of ${m.source}`});
      for (const s of m.snapshots) pick.append(el('option', {value: s.name, text: `${s.kimg} kimg · ${s.name}`}));
      pick.value = m.snapshot;
      pick.addEventListener('change', () => { state.snaps[m.index] = pick.value; renderAll(); });
      row.append(el('label', {for: pick.id, text: 'snapshot '}), pick);
    }
    if (m.note) row.append(el('div', {class: 'hint', text: m.note}));
    list.append(row);
    $('main-row').append(makeSlot(`main-${m.index}`, networkLabel(m)));
    if (m.features.interpolation) $('interp-row').append(makeSlot(`interp-${m.index}`, `${m.index === 0 ? 'A' : 'B'}`));
  }

  // which controls apply
  const any = (f) => info.networks.some((m) => m.features[f]);
  const classes = Math.max(...info.networks.map((m) => m.c_dim));
  $('class-line').hidden = classes === 0;
  for (let k = 0; k < classes; k++) $('class').append(el('option', {value: k, text: String(k)}));
  state.cls = d.class === null ? 0 : Math.min(d.class, Math.max(classes - 1, 0));
  $('class').value = state.cls;
  $('psi').disabled = $('psi-num').disabled = !any('truncation');
  $('cutoff').disabled = !any('cutoff');
  $('cutoff').max = Math.max(...info.networks.map((m) => m.num_ws));
  $('noise').disabled = !any('noise');
  $('transform-box').hidden = !any('transform');
  const mixable = any('mixing');
  for (const id of ['mix-rows', 'mix-cols', 'mix-lo', 'mix-hi']) $(id).disabled = !mixable;
  $('mix-hi').max = $('mix-lo').max = Math.max(...info.networks.map((m) => m.num_ws)) - 1;
  if (!mixable) $('mix-note').textContent = 'style mixing is off: ' + (info.networks[0].notes.find((n) => n.includes('ws')) || 'these networks have no per-layer styles');
  $('play').disabled = !any('interpolation');
  const notes = $('notes');
  for (const m of info.networks) for (const n of m.notes) notes.append(el('li', {text: `${m.index === 0 ? 'A' : 'B'}: ${n}`}));

  // events
  $('seed').addEventListener('input', () => setSeed($('seed').value));
  $('seed-step').addEventListener('input', () => { state.step = Math.max(1, Math.trunc(+$('seed-step').value || 1)); });
  $('seed-dec').addEventListener('click', () => setSeed(state.seed - state.step));
  $('seed-inc').addEventListener('click', () => setSeed(state.seed + state.step));
  $('seed-random').addEventListener('click', () => setSeed(randomSeed()));
  bindPair('psi', 'psi-num', 'psi', renderAll);
  $('cutoff').addEventListener('input', () => { state.cutoff = $('cutoff').value.trim(); renderAll(); });
  $('class').addEventListener('change', () => { state.cls = +$('class').value; renderAll(); });
  $('noise').addEventListener('change', () => { state.noise = $('noise').value; renderAll(); });
  $('fft').addEventListener('change', () => { state.fft = $('fft').checked; renderMain(); });
  $('zoom').addEventListener('change', applyZoom);
  const setTx = bindPair('tx', 'tx-num', 'tx', renderAll);
  const setTy = bindPair('ty', 'ty-num', 'ty', renderAll);
  const setRot = bindPair('rot', 'rot-num', 'rot', renderAll);
  $('transform-reset').addEventListener('click', () => { setTx(0); setTy(0); setRot(0); });
  $('seed2').addEventListener('input', () => {
    const s = Math.trunc(+$('seed2').value);
    if (Number.isFinite(s) && s >= 0 && s <= MAX_SEED) { state.seed2 = s; renderInterp(); }
  });
  bindPair('t', 't-num', 't', renderInterp);
  $('play').addEventListener('click', togglePlay);
  for (const id of ['mix-rows', 'mix-cols', 'mix-lo', 'mix-hi']) $(id).addEventListener('change', buildMix);
  $('mix-panel').addEventListener('toggle', () => { state.mixOpen = $('mix-panel').open; buildMix(); });
  $('strip-panel').addEventListener('toggle', () => { state.stripOpen = $('strip-panel').open; buildStrip(); });
  $('strip-panel').hidden = !info.networks.some((m) => m.kind === 'run' && m.snapshots.length > 1);
  document.addEventListener('keydown', (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    if (ev.key === 'ArrowLeft') setSeed(state.seed - state.step);
    if (ev.key === 'ArrowRight') setSeed(state.seed + state.step);
  });
  applyZoom();
}

// the interpolation loop: t goes there and back in interp_frames steps, a frame once the last one is shown
async function togglePlay() {
  state.playing = !state.playing;
  $('play').textContent = state.playing ? 'stop' : 'play loop';
  const run = ++state.loopRun;  // a loop stopped and restarted while asleep must not go on beside the new one
  const d = state.info.defaults;
  const frameMs = 1000 / d.interp_fps;
  while (state.playing && state.loopRun === run) {
    const t0 = performance.now();
    let t = state.t + state.dir / d.interp_frames;
    if (t >= 1 || t <= 0) { t = Math.min(1, Math.max(0, t)); state.dir = -state.dir; }
    state.t = Math.round(t * 1e4) / 1e4;
    $('t').value = $('t-num').value = state.t;
    renderInterp();
    while (state.playing && [...slots.entries()].some(([id, s]) => id.startsWith('interp-') && (s.inflight || s.want !== s.shown))) {
      await sleep(5);
    }
    await sleep(Math.max(0, frameMs - (performance.now() - t0)));
  }
}

// ------------------------------------------------------------------------------------------------
// hooks for tests and the curious: whether every image shows the latest settings, and an image's pixels

window.explorer = {
  state,
  settled() {
    // a <details> panel fires its toggle event a task after it opens: until then its images are not asked for
    const panels = $('mix-panel').open === state.mixOpen && $('strip-panel').open === state.stripOpen;
    return state.info !== null && panels && [...slots.values()].every((s) => !s.inflight && s.want === s.shown);
  },
  pixels(id) {
    const img = $(id);
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    return {width: canvas.width, height: canvas.height, data: Array.from(data)};
  },
};

async function main() {
  try {
    const resp = await fetch('/api/info', {cache: 'no-store'});
    if (!resp.ok) throw new Error(`/api/info: ${resp.status}`);
    state.info = await resp.json();
  } catch (err) {
    $('status').textContent = `cannot reach the server: ${err.message}`;
    return;
  }
  setupControls();
  renderAll();
  updateStatus();
}

main();
