// The live page of `moe serve`: a chat over the server's own OpenAI API, and what the experts
// do while it answers, from the server-sent events of GET /live/events. No libraries, no build.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const KEY_STORE = 'moe-api-key';
  const FADE_MS = 1500; // how long a just-read or just-evicted expert stays highlighted
  const WINDOW_S = 300; // seconds of history the charts show
  const COLORS = {
    absent: [31, 36, 48], resident: [59, 111, 216], pinned: [181, 140, 255],
    read: [61, 220, 132], evicted: [255, 93, 93], pad: [23, 26, 33],
  };
  const ABSENT = 0, RESIDENT = 1, PINNED = 3, PAD = 255, READ = 4, EVICTED = 8;

  const state = {
    keyRequired: document.querySelector('meta[name="moe-key-required"]').content === 'true',
    key: sessionStorage.getItem(KEY_STORE),
    hello: null,
    messages: [],
    busy: null, // the AbortController of the answer being streamed
  };

  // -- numbers -------------------------------------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return '–';
    if (n >= 1e9) return (n / 1e9).toFixed(2) + ' GB';
    if (n >= 1e6) return (n / 1e6).toFixed(1) + ' MB';
    return (n / 1e3).toFixed(0) + ' kB';
  }
  function esc(text) {
    const div = document.createElement('div');
    div.textContent = String(text);
    return div.innerHTML;
  }
  function num(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return '–';
    return x.toFixed(digits);
  }

  // -- the API key ---------------------------------------------------------------------------
  let keyWaiters = null;
  function askKey(message) {
    if (!keyWaiters) {
      keyWaiters = [];
      if (message) $('key-message').textContent = message;
      $('key-dialog').hidden = false;
      $('key-input').focus();
    }
    return new Promise((resolve) => keyWaiters.push(resolve));
  }
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) return;
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    $('key-dialog').hidden = true;
    $('key-input').value = '';
    const waiters = keyWaiters || [];
    keyWaiters = null;
    waiters.forEach((resolve) => resolve());
  });

  // fetch with the key (as a header, never in a URL); asks for it when the server refuses
  async function api(path, options = {}) {
    for (;;) {
      if (state.keyRequired && !state.key) await askKey();
      const headers = Object.assign({}, options.headers || {});
      if (state.key) headers.Authorization = 'Bearer ' + state.key;
      const response = await fetch(path, Object.assign({}, options, { headers }));
      if (response.status !== 401) return response;
      state.keyRequired = true;
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
      await askKey('The server refused that key. Enter the key it was started with.');
    }
  }

  // Server-sent events from a fetch body: EventSource cannot send the key in a header.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let match;
        while ((match = /\r?\n\r?\n/.exec(buffer)) !== null) {
          const block = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          let name = 'message';
          const data = [];
          for (const line of block.split(/\r?\n/)) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'event') name = text;
            else if (field === 'data') data.push(text);
          }
          if (data.length) yield { name, data: data.join('\n') };
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // -- the heatmap ---------------------------------------------------------------------------
  const heat = {
    canvas: $('heatmap'), layers: 0, experts: 0, cells: null, readAt: null, evictAt: null,
    cw: 1, ch: 1, left: 30, top: 16, animating: false, frames: 0,
  };

  function heatReset(layers, experts) {
    heat.layers = layers;
    heat.experts = experts;
    heat.cells = new Uint8Array(layers * experts).fill(PAD);
    heat.readAt = new Float64Array(layers * experts);
    heat.evictAt = new Float64Array(layers * experts);
    heatSize();
  }

  function heatSize() {
    const { layers, experts } = heat;
    // The canvas is as wide as the panel, so its labels are drawn at the screen's own pixels;
    // cells may be fractions of a pixel wide (512 experts in ~800 pixels).
    const width = heat.canvas.clientWidth || 800;
    heat.cw = (width - heat.left) / Math.max(experts, 1);
    heat.ch = Math.max(3, Math.min(22, Math.floor(360 / Math.max(layers, 1))));
    heat.canvas.width = width;
    heat.canvas.height = heat.top + layers * heat.ch;
  }

  function heatUpdate(b64) {
    const raw = atob(b64);
    const now = performance.now();
    let resident = 0, pinned = 0, read = 0, evicted = 0;
    for (let i = 0; i < raw.length && i < heat.cells.length; i++) {
      const cell = raw.charCodeAt(i);
      if (cell & READ) { heat.readAt[i] = now; read++; }
      if (cell & EVICTED) { heat.evictAt[i] = now; evicted++; }
      const base = cell === PAD ? PAD : cell & PINNED;
      heat.cells[i] = base;
      if (base === PINNED) pinned++;
      if (base !== PAD && base & RESIDENT) resident++;
    }
    heat.frames++;
    heat.canvas.dataset.frames = String(heat.frames);
    heat.canvas.dataset.resident = String(resident);
    const total = heat.cells.filter((c) => c !== PAD).length;
    $('heat-summary').textContent =
      `${resident} of ${total} resident (${pinned} pinned) · last update: ${read} read, ${evicted} evicted`;
    heatAnimate();
  }

  function mix(a, b, t) {
    return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
  }

  // Cells are painted one pixel each on a small canvas, which is then scaled up: the browser does
  // the enlarging, so a redraw costs one pass over layers x experts, whatever the page's size.
  const cellsCanvas = document.createElement('canvas');

  function heatDraw() {
    const { canvas, layers, experts, cw, ch, left, top } = heat;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#171a21';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!layers) {
      ctx.fillStyle = '#8a90a0';
      ctx.fillText('no offloaded experts to show', 8, 20);
      return false;
    }
    if (cellsCanvas.width !== experts || cellsCanvas.height !== layers) {
      cellsCanvas.width = experts;
      cellsCanvas.height = layers;
    }
    const cellsCtx = cellsCanvas.getContext('2d');
    const image = cellsCtx.createImageData(experts, layers);
    const px = image.data;
    const now = performance.now();
    let fading = false;
    for (let i = 0, o = 0; i < heat.cells.length; i++, o += 4) {
      const cell = heat.cells[i];
      let color = cell === PAD ? COLORS.pad
        : cell === PINNED ? COLORS.pinned
          : cell & RESIDENT ? COLORS.resident : COLORS.absent;
      const sinceRead = now - heat.readAt[i];
      const sinceEvict = now - heat.evictAt[i];
      if (heat.readAt[i] && sinceRead < FADE_MS && cell & RESIDENT) {
        color = mix(COLORS.read, color, sinceRead / FADE_MS);
        fading = true;
      } else if (heat.evictAt[i] && sinceEvict < FADE_MS && !(cell & RESIDENT)) {
        color = mix(COLORS.evicted, color, sinceEvict / FADE_MS);
        fading = true;
      }
      px[o] = color[0]; px[o + 1] = color[1]; px[o + 2] = color[2]; px[o + 3] = 255;
    }
    cellsCtx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(cellsCanvas, left, top, experts * cw, layers * ch);
    // a one-pixel gap between cells when they are big enough to show it
    ctx.fillStyle = '#171a21';
    if (cw > 3) {
      for (let e = 1; e <= experts; e++) ctx.fillRect(Math.round(left + e * cw) - 1, top, 1, layers * ch);
    }
    if (ch > 3) for (let l = 1; l <= layers; l++) ctx.fillRect(left, top + l * ch - 1, experts * cw, 1);
    ctx.fillStyle = '#8a90a0';
    ctx.font = '10px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    const layerStep = Math.max(1, Math.ceil(12 / ch));
    for (let l = 0; l < layers; l += layerStep) {
      ctx.fillText(String(l), 2, top + l * ch + ch / 2);
    }
    ctx.textBaseline = 'alphabetic';
    const expertStep = [1, 2, 4, 8, 16, 32, 64, 128].find((s) => s * cw >= 36) || 128;
    for (let e = 0; e < experts; e += expertStep) ctx.fillText(String(e), left + e * cw, 11);
    return fading;
  }

  // Redraw while highlights fade, at most every FRAME_MS: smooth enough, and cheap.
  const FRAME_MS = 66;
  function heatAnimate() {
    if (heat.animating) return;
    heat.animating = true;
    const frame = () => {
      if (heatDraw()) setTimeout(frame, FRAME_MS);
      else heat.animating = false;
    };
    setTimeout(frame, 0);
  }

  heat.canvas.addEventListener('mousemove', (event) => {
    if (!heat.layers) return;
    const rect = heat.canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) * (heat.canvas.width / rect.width) - heat.left;
    const y = (event.clientY - rect.top) * (heat.canvas.height / rect.height) - heat.top;
    const e = Math.floor(x / heat.cw), l = Math.floor(y / heat.ch);
    if (e < 0 || l < 0 || e >= heat.experts || l >= heat.layers) {
      $('heat-hover').textContent = '';
      return;
    }
    const cell = heat.cells[l * heat.experts + e];
    const what = cell === PAD ? '' : cell === PINNED ? 'pinned' : cell & RESIDENT ? 'resident' : 'on disk';
    $('heat-hover').textContent = what && `layer ${l} · expert ${e} · ${what}`;
  });
  window.addEventListener('resize', () => {
    if (!heat.layers) return;
    heatSize();
    heatDraw();
  });
  heat.canvas.addEventListener('mouseleave', () => { $('heat-hover').textContent = ''; });

  // -- charts --------------------------------------------------------------------------------
  class Chart {
    constructor(id, title, series, options = {}) {
      this.canvas = $(id);
      this.title = title;
      this.series = series; // [{key, color, label}]
      this.options = options; // {unit, digits, max, reference: () => number, dots}
      this.points = [];
      this.draw();
    }
    reset() { this.points = []; }
    push(t, values) {
      this.points.push({ t, values });
      const cut = t - WINDOW_S;
      while (this.points.length && this.points[0].t < cut) this.points.shift();
    }
    draw() {
      const { canvas, options } = this;
      const ratio = window.devicePixelRatio || 1;
      const w = canvas.clientWidth || 300, h = 120;
      if (canvas.width !== Math.round(w * ratio)) {
        canvas.width = Math.round(w * ratio);
        canvas.height = Math.round(h * ratio);
        canvas.style.height = h + 'px';
      }
      const ctx = canvas.getContext('2d');
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const pad = { l: 8, r: 8, t: 22, b: 14 };
      const now = Date.now() / 1000;
      const t0 = now - WINDOW_S;
      let max = options.max || 0;
      const reference = options.reference ? options.reference() : null;
      if (!options.max) {
        for (const p of this.points) for (const s of this.series) {
          const v = p.values[s.key];
          if (v !== null && v !== undefined) max = Math.max(max, v);
        }
        if (reference) max = Math.max(max, reference);
        max = max > 0 ? max * 1.15 : 1;
      }
      const X = (t) => pad.l + ((t - t0) / WINDOW_S) * (w - pad.l - pad.r);
      const Y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
      ctx.strokeStyle = '#262b36';
      ctx.beginPath();
      ctx.moveTo(pad.l, Y(0) + 0.5);
      ctx.lineTo(w - pad.r, Y(0) + 0.5);
      ctx.stroke();
      if (reference) {
        ctx.setLineDash([4, 3]);
        ctx.strokeStyle = '#8a90a0';
        ctx.beginPath();
        ctx.moveTo(pad.l, Y(reference));
        ctx.lineTo(w - pad.r, Y(reference));
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = '#8a90a0';
        ctx.font = '10px system-ui, sans-serif';
        ctx.fillText(options.referenceLabel || '', pad.l + 2, Y(reference) - 3);
      }
      for (const s of this.series) {
        ctx.strokeStyle = ctx.fillStyle = s.color;
        ctx.lineWidth = 1.5;
        let open = false;
        ctx.beginPath();
        for (const p of this.points) {
          const v = p.values[s.key];
          if (v === null || v === undefined) { open = false; continue; }
          if (options.dots) {
            ctx.fillRect(X(p.t) - 2, Y(v) - 2, 4, 4);
          } else if (open) {
            ctx.lineTo(X(p.t), Y(v));
          } else {
            ctx.moveTo(X(p.t), Y(v));
            open = true;
          }
        }
        if (!options.dots) ctx.stroke();
      }
      ctx.lineWidth = 1;
      ctx.font = '12px system-ui, sans-serif';
      ctx.fillStyle = '#d6d9e0';
      ctx.fillText(this.title, pad.l, 14);
      const last = this.points.length ? this.points[this.points.length - 1].values : {};
      const lastKnown = (key) => {
        for (let i = this.points.length - 1; i >= 0; i--) {
          const v = this.points[i].values[key];
          if (v !== null && v !== undefined) return v;
        }
        return null;
      };
      const shown = this.series.map((s) => {
        const v = options.lastKnown === false ? last[s.key] : lastKnown(s.key);
        return (s.label ? s.label + ' ' : '') + num(v, options.digits ?? 1);
      }).join(' · ');
      ctx.textAlign = 'right';
      ctx.fillStyle = this.series[0].color;
      ctx.fillText(shown + (options.unit ? ' ' + options.unit : ''), w - pad.r, 14);
      ctx.fillStyle = '#8a90a0';
      ctx.font = '10px system-ui, sans-serif';
      ctx.fillText('max ' + num(max, options.digits ?? 1), w - pad.r, h - 3);
      ctx.textAlign = 'left';
      ctx.fillText(`${WINDOW_S / 60} min`, pad.l, h - 3);
    }
  }

  const charts = {
    hit: new Chart('chart-hit', 'Hit rate', [{ key: 'hit_rate', color: '#3b6fd8' }],
      { max: 1, digits: 2 }),
    mbtok: new Chart('chart-mbtok', 'Read per token', [{ key: 'mb_per_token', color: '#f2b84b' }],
      { unit: 'MB', digits: 2 }),
    read: new Chart('chart-read', 'Read throughput', [{ key: 'read_mb_s', color: '#37c5c9' }], {
      unit: 'MB/s', digits: 0,
      reference: () => state.hello && state.hello.disk_mb_s,
      referenceLabel: 'disk',
    }),
    toks: new Chart('chart-toks', 'Decode', [{ key: 'tok_s', color: '#3ddc84' }],
      { unit: 'tok/s', digits: 1 }),
    ttft: new Chart('chart-ttft', 'Time to first token', [{ key: 'ttft_s', color: '#f2b84b' }],
      { unit: 's', digits: 2, dots: true }),
    queue: new Chart('chart-queue', 'Queue', [
      { key: 'waiting', color: '#b58cff', label: 'waiting' },
      { key: 'running', color: '#8a90a0', label: 'running' },
    ], { digits: 0, lastKnown: false }),
  };

  function pushPoint(p) {
    for (const name of ['hit', 'mbtok', 'read', 'toks', 'queue']) charts[name].push(p.t, p);
  }
  let lastRequest = 0;
  function pushRequest(r) {
    if (r.id <= lastRequest) return; // a hello and the next tick may both carry it
    lastRequest = r.id;
    charts.ttft.push(r.t, r);
  }
  function drawCharts() {
    for (const chart of Object.values(charts)) chart.draw();
  }
  setInterval(drawCharts, 1000); // the time axis moves even when nothing happens

  // -- settings and memory -------------------------------------------------------------------
  function showSettings(hello) {
    const s = hello.settings;
    $('model').textContent = hello.model;
    const parts = [];
    const caps = s.capacity.filter((c) => c !== null && c !== undefined);
    if (caps.length) {
      const same = caps.every((c) => c === caps[0]) && s.num_experts.every((n) => n === s.num_experts[0]);
      parts.push(same ? `<b>${caps[0]} of ${s.num_experts[0]}</b> experts × ${caps.length} layers`
        : `<b>${caps.reduce((a, b) => a + b, 0)}</b> expert slots over ${caps.length} layers`);
    }
    if (s.miss) parts.push(s.miss === 'exact' ? 'miss <b>exact</b>' : `miss <span class="lossy">${esc(s.miss)} (LOSSY)</span>`);
    if (s.policy) parts.push(`policy <b>${esc(s.policy)}</b>`);
    if (s.backend) parts.push(`backend <b>${esc(s.backend)}</b>`);
    if (s.kv_bits) parts.push(`KV <b>${s.kv_bits}-bit</b>`);
    if (s.max_context) parts.push(`context <b>${s.max_context}</b>`);
    if (s.packed) parts.push('<b>packed</b> experts');
    if (hello.disk_mb_s) parts.push(`disk <b>${Math.round(hello.disk_mb_s)} MB/s</b>`);
    $('settings').innerHTML = parts.join(' · ');
    $('max-tokens').value = Math.min(Number($('max-tokens').value) || 256, s.max_tokens_default || 256);
  }

  const PART_COLORS = ['#4b5263', '#8a6d3b', '#3b6fd8', '#37c5c9', '#2f8f6f', '#7b5ea8'];
  const memoryView = { scale: 1, planned: 0, budget: null, markers: {} };

  // The plan's parts, drawn once per connection; the process's use moves over them (showMemory).
  function showBudget(budget) {
    const bar = $('memory-bar'), legend = $('memory-legend');
    bar.textContent = '';
    legend.textContent = '';
    memoryView.budget = budget;
    memoryView.markers = {};
    if (!budget) {
      $('budget-reason').textContent = 'This provider reports no memory plan.';
      return;
    }
    memoryView.planned = budget.parts.reduce((a, p) => a + p.bytes, 0);
    memoryView.scale = Math.max(budget.memory || 0, memoryView.planned, 1);
    budget.parts.forEach((part, i) => {
      const div = document.createElement('div');
      div.className = 'part';
      div.style.width = (100 * part.bytes / memoryView.scale) + '%';
      div.style.background = PART_COLORS[i % PART_COLORS.length];
      div.title = `${part.name}: ${bytes(part.bytes)}`;
      bar.appendChild(div);
      const item = document.createElement('span');
      const sw = document.createElement('i');
      sw.className = 'sw';
      sw.style.background = PART_COLORS[i % PART_COLORS.length];
      item.append(sw, `${part.name} ${bytes(part.bytes)}`);
      legend.appendChild(item);
    });
    for (const [key, label] of [['process', 'process now'], ['peak', 'process peak']]) {
      const marker = document.createElement('div');
      marker.className = 'marker ' + (key === 'process' ? 'now' : 'peak');
      marker.hidden = true;
      bar.appendChild(marker);
      memoryView.markers[key] = { marker, label };
      const item = document.createElement('span');
      const sw = document.createElement('i');
      sw.className = 'sw';
      sw.style.background = key === 'process' ? '#d6d9e0' : '#f2b84b';
      item.append(sw, label);
      legend.appendChild(item);
    }
    $('budget-reason').textContent = budget.reason ? 'Why: ' + budget.reason + '.' : '';
  }

  function showMemory(memory) {
    const budget = memoryView.budget;
    if (!budget || !memory) return;
    for (const [key, { marker, label }] of Object.entries(memoryView.markers)) {
      const value = memory[key];
      marker.hidden = !value;
      if (!value) continue;
      marker.style.left = Math.min(100, 100 * value / memoryView.scale) + '%';
      marker.title = `${label}: ${bytes(value)}`;
    }
    const limit = budget.memory ? `of ${bytes(budget.memory)} budget` : '(no memory budget: capacity given)';
    $('memory-summary').textContent =
      `process ${bytes(memory.process)} ${limit} · peak ${bytes(memory.peak)} · planned ${bytes(memoryView.planned)}`;
  }

  // -- the live feed -------------------------------------------------------------------------
  function setStatus(text, kind) {
    $('status').textContent = text;
    $('status').dataset.state = kind;
  }

  function onHello(hello) {
    state.hello = hello;
    showSettings(hello);
    showBudget(hello.budget);
    showMemory(hello.memory);
    heatReset(hello.layers, hello.experts);
    if (hello.heat) heatUpdate(hello.heat);
    else heatDraw();
    for (const chart of Object.values(charts)) chart.reset();
    lastRequest = 0;
    hello.history.forEach(pushPoint);
    hello.requests.forEach(pushRequest);
    drawCharts();
  }

  function onTick(tick) {
    if (tick.point) pushPoint(tick.point);
    (tick.requests || []).forEach(pushRequest);
    if (tick.heat) heatUpdate(tick.heat);
    if (tick.memory) showMemory(tick.memory);
    drawCharts();
  }

  async function follow() {
    let wait = 500;
    for (;;) {
      try {
        const response = await api('/live/events', { headers: { Accept: 'text/event-stream' } });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        setStatus('live', 'live');
        wait = 500;
        for await (const event of events(response)) {
          const body = JSON.parse(event.data);
          if (event.name === 'hello') onHello(body);
          else if (event.name === 'tick') onTick(body);
        }
      } catch (error) {
        // the server went away or restarts; try again
      }
      setStatus('reconnecting', 'reconnecting');
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, 8000);
    }
  }

  // -- chat ----------------------------------------------------------------------------------
  function bubble(role, text) {
    const div = document.createElement('div');
    div.className = 'msg ' + role;
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    div.appendChild(body);
    $('messages').appendChild(div);
    $('messages').scrollTop = $('messages').scrollHeight;
    return div;
  }

  function finish(div, kind, meta) {
    div.dataset.state = kind;
    const span = document.createElement('span');
    span.className = 'meta';
    span.textContent = meta;
    div.appendChild(span);
    state.busy = null;
    $('stop').disabled = true;
    $('send').disabled = false;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return (body.error && body.error.message) || `HTTP ${response.status}`;
    } catch (e) {
      return `HTTP ${response.status}`;
    }
  }

  async function send(text) {
    state.messages.push({ role: 'user', content: text });
    bubble('user', text);
    const div = bubble('assistant', '');
    div.dataset.state = 'streaming';
    const out = div.querySelector('.text');
    // A thinking model's reasoning (reasoning_content) is shown apart from its answer, dimmed.
    const thinking = document.createElement('span');
    thinking.className = 'thinking';
    div.insertBefore(thinking, out);
    const controller = new AbortController();
    state.busy = controller;
    $('stop').disabled = false;
    $('send').disabled = true;
    const started = performance.now();
    let first = null, last = null, usage = null;
    try {
      const response = await api('/v1/chat/completions', {
        method: 'POST',
        signal: controller.signal,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          model: state.hello ? state.hello.model : 'moe',
          messages: state.messages,
          stream: true,
          stream_options: { include_usage: true },
          max_tokens: Number($('max-tokens').value) || 256,
          temperature: Number($('temperature').value) || 0,
        }),
      });
      if (!response.ok) {
        state.messages.pop();
        finish(div, 'error', await errorText(response));
        return;
      }
      for await (const event of events(response)) {
        if (event.data === '[DONE]') break;
        const chunk = JSON.parse(event.data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        const piece = delta && (delta.content || delta.reasoning_content);
        if (piece) {
          if (first === null) first = performance.now();
          last = performance.now();
          if (delta.reasoning_content) thinking.textContent += delta.reasoning_content;
          if (delta.content) out.textContent += delta.content;
          $('messages').scrollTop = $('messages').scrollHeight;
        }
      }
      state.messages.push({ role: 'assistant', content: out.textContent });
      const tokens = usage ? usage.completion_tokens : null;
      const rate = tokens > 1 && last > first ? (tokens - 1) / ((last - first) / 1000) : null;
      finish(div, 'done', `${tokens ?? '?'} tokens · ${num(rate, 1)} tok/s · first token after ` +
        `${num(first === null ? null : (first - started) / 1000, 2)} s`);
    } catch (error) {
      if (error.name === 'AbortError') {
        // The server stops generating when the stream closes; keep what was said.
        state.messages.push({ role: 'assistant', content: out.textContent });
        finish(div, 'stopped', 'stopped');
      } else {
        state.messages.pop();
        finish(div, 'error', String(error.message || error));
      }
    }
  }

  $('chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('chat-input').value.trim();
    if (!text || state.busy) return;
    $('chat-input').value = '';
    send(text);
  });
  $('chat-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      $('chat-form').requestSubmit();
    }
  });
  $('stop').addEventListener('click', () => { if (state.busy) state.busy.abort(); });
  $('clear').addEventListener('click', () => {
    if (state.busy) state.busy.abort();
    state.messages = [];
    $('messages').textContent = '';
  });

  heatDraw();
  follow();
})();
