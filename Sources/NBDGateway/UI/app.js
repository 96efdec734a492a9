// nbd-gateway disk browser: exports and their metadata, an allocation map, a hex view and live
// figures, all from the gateway's own API. One ES module, no dependencies, no build step.
//
// The page is served under the gateway's base path (`/` or `/PREFIX/`), so every URL here is
// relative to the page's directory (`new URL('exports', document.baseURI)`). The page's
// Content-Security-Policy allows no inline script or style: the DOM is built with
// createElement/textContent (never innerHTML) and looks come from classes in style.css.
//
// For tests (Tests/browser/ui_check.py) the drawn state is also in the DOM:
//   #allocation-map  data-state (loading|done|partial|error|unsupported|empty), data-start,
//                    data-end, data-export, data-segments (JSON [[start,end,kind],...], kinds
//                    data|zero|hole|unknown, merged, clipped to the view)
//   #allocation-totals data-data, data-zero, data-hole, data-unknown (bytes), data-partial
//   #hex-view        data-state (loading|done|error), data-offset, data-length, data-export
//   #metrics         data-state (loading|ok|denied|error), data-requests
//   #export-metadata dd[data-field][data-value], li.flag[data-flag][data-value]
//   #token-panel     data-prompts (how many times the token was asked for)

'use strict';

// ---------------------------------------------------------------------------------------------
// Constants

const MAX_HEX_LENGTH = 64 * 1024;
const DEFAULT_HEX_LENGTH = 512;
const MAX_EXTENT_REQUESTS_PER_VIEW = 32;
const MAX_CACHED_SEGMENTS = 400000;
const MAX_TABLE_ROWS = 200;
const MAX_SEGMENTS_ATTRIBUTE = 20000;
const METRICS_INTERVAL_MS = 5000;
const MAX_LIST_METADATA = 16;
const TOKEN_KEY = 'nbd-gateway.token@' + new URL('.', document.baseURI).pathname;

const KIB = 1024;
const MIB = 1024 * 1024;
const UNITS = [
  ['EiB', 2 ** 60], ['PiB', 2 ** 50], ['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10],
];
const KIND_LABELS = { data: 'data', zero: 'zero', hole: 'hole', unknown: 'not loaded' };
const FLAG_LABELS = [
  ['can_flush', 'Flush'],
  ['can_fua', 'FUA'],
  ['can_trim', 'Trim'],
  ['can_zero', 'Write zeroes'],
  ['can_fast_zero', 'Fast zero'],
  ['can_df', 'DF'],
  ['can_multi_conn', 'Multi-conn'],
  ['can_cache', 'Cache'],
  ['rotational', 'Rotational'],
];

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

const $ = (id) => document.getElementById(id);

/** Builds an element: el('li', {class: 'x', dataset: {a: 1}, 'aria-label': 'y'}, child, 'text'). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    else if (key === 'on') for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---------------------------------------------------------------------------------------------
// Numbers

const exactFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** 1073741824 → "1,073,741,824". Takes a number or a digit string (sizes past 2^53). */
function exact(value) {
  if (typeof value === 'string' && /^\d+$/.test(value)) return BigInt(value).toLocaleString('en-US');
  return exactFormat.format(value);
}

/** Binary units, three significant figures: 1073741824 → "1 GiB", 1536 → "1.5 KiB". */
function human(bytes) {
  if (!Number.isFinite(bytes)) return String(bytes);
  if (bytes < KIB) return `${bytes} B`;
  for (const [unit, size] of UNITS) {
    if (bytes >= size) {
      const value = bytes / size;
      const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
      return `${Number(value.toFixed(digits))} ${unit}`;
    }
  }
  return `${bytes} B`;
}

/** "1 GiB (1,073,741,824 bytes)", or "512 bytes". */
function humanExact(bytes, exactText) {
  const full = exactText ?? exact(bytes);
  if (bytes < KIB) return `${full} byte${bytes === 1 ? '' : 's'}`;
  return `${human(bytes)} (${full} bytes)`;
}

/** Axis labels: the shortest exact form: "384 MiB", "1.5 GiB", "4,100". */
function axisLabel(value) {
  if (value === 0) return '0';
  for (const [unit, size] of UNITS) {
    const q = value / size;
    if (q >= 1 && Math.abs(q * 1000 - Math.round(q * 1000)) < 1e-6) return `${Number(q.toFixed(3))} ${unit}`;
  }
  return exact(value);
}

const hex = (value) => '0x' + Math.floor(value).toString(16);

/**
 * Parses a byte count typed by a person: "4096", "4,096", "0x1000", "64K", "1.5 MiB", "2G".
 * Units are binary (K = KiB = 1024). Returns an integer or throws an Error with a message.
 */
function parseBytes(text, what) {
  const raw = String(text).trim().replace(/[,_\s]/g, '');
  if (raw === '') throw new Error(`${what}: enter a number of bytes`);
  if (/^0x[0-9a-f]+$/i.test(raw)) return parseInt(raw.slice(2), 16);
  const match = /^(\d+(?:\.\d+)?|\.\d+)([kmgtpe]?)(i?b?)$/i.exec(raw);
  if (!match || (match[3] && !match[2] && match[3].toLowerCase() !== 'b') || match[3].toLowerCase() === 'i') {
    throw new Error(`${what}: "${text}" is not a byte count (try 4096, 0x1000, 64K or 1.5 MiB)`);
  }
  const power = match[2] ? 'kmgtpe'.indexOf(match[2].toLowerCase()) + 1 : 0;
  const value = parseFloat(match[1]) * 1024 ** power;
  if (!Number.isFinite(value)) throw new Error(`${what}: "${text}" is too large`);
  if (!Number.isInteger(value)) {
    if (power === 0) throw new Error(`${what}: a byte count is a whole number`);
    return Math.round(value);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Errors

class ApiError extends Error {
  constructor({ message, status = 0, code = '', requestId = '', nbdError = null, path = '' }) {
    super(message);
    this.name = 'ApiError';
    Object.assign(this, { status, code, requestId, nbdError, path });
  }
}

const isAbort = (error) => error && (error.name === 'AbortError' || error.code === 20);

/** The gateway's JSON error (`{"error":{status,code,message,...}}`), or the text of another body. */
async function errorFrom(response, path) {
  let text = '';
  try { text = await response.text(); } catch { /* the body may be gone */ }
  let info = null;
  try { info = JSON.parse(text)?.error ?? null; } catch { /* not JSON */ }
  if (info && typeof info === 'object') {
    return new ApiError({
      message: String(info.message ?? response.statusText ?? 'error'),
      status: info.status ?? response.status,
      code: String(info.code ?? ''),
      requestId: String(info.request_id ?? response.headers.get('X-Request-Id') ?? ''),
      nbdError: info.nbd_error ?? null,
      path,
    });
  }
  const snippet = text.replace(/\s+/g, ' ').trim().slice(0, 200);
  return new ApiError({
    message: `${response.status} ${response.statusText || 'error'}${snippet ? `: ${snippet}` : ''}`,
    status: response.status,
    requestId: response.headers.get('X-Request-Id') ?? '',
    path,
  });
}

/** Shows an error in the page's alert area: message, then status, code, NBD error, request id. */
function showError(error, context = '') {
  if (isAbort(error)) return;
  const area = $('error');
  const message = error instanceof Error ? error.message : String(error);
  const details = [];
  if (error instanceof ApiError) {
    if (error.status) details.push(`HTTP ${error.status}`);
    if (error.code) details.push(`code ${error.code}`);
    if (error.nbdError) details.push(`NBD ${error.nbdError}`);
    if (error.requestId) details.push(`request ${error.requestId}`);
    if (error.path) details.push(error.path);
  }
  const box = el('div', { class: 'error-box' },
    el('div', {},
      el('p', { class: 'error-message', text: context ? `${context}: ${message}` : message }),
      details.length ? el('p', { class: 'error-detail', text: details.join(' · ') }) : null),
    el('button', { type: 'button', class: 'small', 'aria-label': 'Dismiss the error', on: { click: clearError }, text: 'Dismiss' }));
  area.dataset.code = error?.code ?? '';
  area.dataset.status = String(error?.status ?? '');
  area.replaceChildren(box);
}

function clearError() {
  const area = $('error');
  area.replaceChildren();
  delete area.dataset.code;
  delete area.dataset.status;
}

window.addEventListener('unhandledrejection', (event) => {
  if (isAbort(event.reason)) return;
  showError(event.reason, 'Unexpected failure');
});
window.addEventListener('error', (event) => showError(event.error ?? event.message, 'Script error'));

// ---------------------------------------------------------------------------------------------
// API access with an optional token (asked for on the first 401, kept in sessionStorage)

const apiURL = (path) => new URL(path, document.baseURI);

/** `exports/NAME` or `exports/NAME/SUFFIX`, the name as one percent-encoded segment. */
function exportPath(name, suffix = '') {
  return `exports/${encodeURIComponent(name)}${suffix ? `/${suffix}` : ''}`;
}

function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

let tokenWaiter = null;
let tokenPrompts = 0;

function updateTokenButton() {
  $('forget-token').hidden = storedToken() === '';
}

/** Shows the token form; resolves once a token has been entered. Shared by concurrent callers. */
function askForToken(message) {
  const panel = $('token-panel');
  $('token-message').textContent = message;
  if (!tokenWaiter) {
    let resolve;
    const promise = new Promise((r) => { resolve = r; });
    tokenWaiter = { promise, resolve };
    tokenPrompts += 1;
    panel.dataset.prompts = String(tokenPrompts);
    panel.hidden = false;
    $('token-input').value = '';
    $('token-input').focus();
  }
  return tokenWaiter.promise;
}

function submitToken(event) {
  event.preventDefault();
  const input = $('token-input');
  const token = input.value.trim();
  if (token === '' || /[^\x20-\x7e]/.test(token)) {
    input.setAttribute('aria-invalid', 'true');
    $('token-message').textContent = token === ''
      ? 'Enter the token.'
      : 'A token is printable ASCII (it travels in an HTTP header).';
    input.focus();
    return;
  }
  input.removeAttribute('aria-invalid');
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* storage off: the retry fails again */ }
  input.value = '';
  $('token-panel').hidden = true;
  updateTokenButton();
  const waiter = tokenWaiter;
  tokenWaiter = null;
  waiter?.resolve();
}

function forgetToken() {
  try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing kept */ }
  updateTokenButton();
  location.reload();
}

/**
 * fetch() relative to the page, with `Authorization: Bearer TOKEN` when a token is kept. A 401
 * asks for a token and retries. Other statuses are returned as they are. `credentials: 'omit'`
 * keeps the browser's own Basic prompt away (the gateway's 401 offers Basic too).
 */
async function api(path, { headers = {}, signal } = {}) {
  for (;;) {
    const token = storedToken();
    const requestHeaders = new Headers(headers);
    if (token) requestHeaders.set('Authorization', `Bearer ${token}`);
    let response;
    try {
      response = await fetch(apiURL(path), { headers: requestHeaders, signal, cache: 'no-store', credentials: 'omit' });
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new ApiError({ message: `could not reach the gateway (${error.message})`, code: 'network_error', path });
    }
    if (response.status !== 401) return response;
    const refusal = await errorFrom(response, path);
    if (storedToken() !== token) continue; // a token was entered meanwhile
    await askForToken(token
      ? `The gateway did not accept this token (${refusal.message}). Enter another one.`
      : `The gateway answered 401 ${refusal.code || 'unauthorized'}: ${refusal.message}.`);
    if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
  }
}

async function apiJSON(path, options) {
  const response = await api(path, options);
  if (!response.ok) throw await errorFrom(response, path);
  const text = await response.text();
  try {
    return { json: JSON.parse(text), text };
  } catch {
    throw new ApiError({ message: `the answer is not JSON: ${text.slice(0, 120)}`, status: response.status, path });
  }
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  exports: [],            // [{name, description}]
  metadata: new Map(),    // name → ExportInfo (+ sizeText: the exact size as sent)
  selected: null,         // export name
  view: { start: 0, end: 0 },
  caches: new Map(),      // name → ExtentCache
  mapGeneration: 0,
  mapAbort: null,
  mapRequestsLeft: 0,
  mapSegments: [],        // merged segments of the view: [start, end, kind]
  hexAbort: null,
  hex: { offset: 0, length: DEFAULT_HEX_LENGTH },
  drag: null,             // {x0, x1} in CSS pixels while dragging on the map
  hoverX: null,
};

const currentInfo = () => (state.selected === null ? null : state.metadata.get(state.selected) ?? null);

// ---------------------------------------------------------------------------------------------
// Location hash: #export=NAME&start=S&end=E&offset=O&length=L (deep links, reload keeps the view)

function readHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  const number = (key) => {
    const value = params.get(key);
    return value !== null && /^\d+$/.test(value) ? Number(value) : null;
  };
  return {
    export: params.has('export') ? params.get('export') : null,
    start: number('start'), end: number('end'), offset: number('offset'), length: number('length'),
  };
}

function writeHash() {
  if (state.selected === null) return;
  const params = new URLSearchParams();
  params.set('export', state.selected);
  params.set('start', String(state.view.start));
  params.set('end', String(state.view.end));
  params.set('offset', String(state.hex.offset));
  params.set('length', String(state.hex.length));
  const hash = '#' + params.toString();
  if (location.hash !== hash) history.replaceState(null, '', hash);
}

// ---------------------------------------------------------------------------------------------
// Exports and metadata

async function loadExports() {
  const status = $('export-list-status');
  status.hidden = false;
  status.textContent = 'Loading the exports…';
  let list;
  const wanted = readHash().export;
  try {
    const { json } = await apiJSON('exports');
    list = Array.isArray(json.exports) ? json.exports : [];
  } catch (error) {
    status.textContent = 'The exports could not be listed. An export can still be opened by name.';
    showError(error, 'Listing the exports');
    if (wanted !== null) await selectExport(wanted, { fromHash: true });
    return;
  }
  state.exports = list;
  renderExportList();
  if (list.length === 0 && wanted === null) {
    status.textContent = 'No exports: the backends list none, or the token may see none.';
    renderMetadata(null);
    return;
  }
  status.hidden = list.length > 0;
  if (list.length === 0) status.textContent = 'No exports listed.';
  const names = list.map((e) => e.name);
  // A deep link may name an export the list does not show: it is opened all the same.
  const choice = wanted !== null ? wanted
    : state.selected !== null && names.includes(state.selected) ? state.selected : names[0];
  // Sizes for the list (a few at a time; the selected one is fetched by selectExport).
  fillListMetadata(names.filter((n) => n !== choice).slice(0, MAX_LIST_METADATA));
  await selectExport(choice, { fromHash: choice === wanted });
}

function renderExportList() {
  const entries = [...state.exports];
  if (state.selected !== null && !entries.some((e) => e.name === state.selected)) {
    entries.push({ name: state.selected, description: 'not in the list: opened by name' });
  }
  const items = entries.map((entry) => {
    const info = state.metadata.get(entry.name);
    const button = el('button', {
      type: 'button',
      class: 'export-item',
      dataset: { name: entry.name, ...(info ? { size: info.sizeText } : {}) },
      'aria-current': entry.name === state.selected ? 'true' : null,
      on: { click: () => selectExport(entry.name), keydown: exportListKeys },
    },
    el('span', { class: 'export-name', text: entry.name === '' ? '(default export)' : entry.name }),
    el('span', { class: 'export-size', text: info ? human(info.size) : '' }),
    entry.description ? el('span', { class: 'export-desc', text: entry.description }) : null);
    return el('li', {}, button);
  });
  const list = $('export-list');
  // Re-rendering must not take the keyboard focus away from the export it was on.
  const focused = list.contains(document.activeElement) ? document.activeElement.dataset.name : undefined;
  list.replaceChildren(...items);
  if (focused !== undefined) {
    [...list.querySelectorAll('button.export-item')].find((b) => b.dataset.name === focused)?.focus();
  }
}

/** Arrow keys, Home and End move between the export buttons; Enter or Space selects. */
function exportListKeys(event) {
  const buttons = [...$('export-list').querySelectorAll('button.export-item')];
  const index = buttons.indexOf(event.currentTarget);
  let next = null;
  if (event.key === 'ArrowDown') next = Math.min(buttons.length - 1, index + 1);
  else if (event.key === 'ArrowUp') next = Math.max(0, index - 1);
  else if (event.key === 'Home') next = 0;
  else if (event.key === 'End') next = buttons.length - 1;
  if (next !== null) {
    event.preventDefault();
    buttons[next].focus();
  }
}

async function fillListMetadata(names) {
  const queue = [...names];
  const worker = async () => {
    while (queue.length) {
      const name = queue.shift();
      try { await fetchMetadata(name); } catch { /* shown when selected */ }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  renderExportList();
}

async function fetchMetadata(name, { reload = false } = {}) {
  if (!reload && state.metadata.has(name)) return state.metadata.get(name);
  const { json, text } = await apiJSON(exportPath(name));
  // The exact size as sent (JSON numbers past 2^53 lose digits in a double).
  const sizeText = /"size"\s*:\s*(\d+)/.exec(text)?.[1] ?? String(json.size);
  const info = { ...json, sizeText };
  state.metadata.set(name, info);
  return info;
}

async function selectExport(name, { fromHash = false } = {}) {
  const changed = state.selected !== name;
  state.selected = name;
  if (changed) clearError();
  renderExportList();
  $('map-export-name').textContent = name === '' ? '(default export)' : name;
  let info;
  try {
    info = await fetchMetadata(name, { reload: true });
  } catch (error) {
    renderMetadata(null, error);
    showError(error, `Reading the metadata of ${name === '' ? 'the default export' : name}`);
    setMapState('error');
    return;
  }
  if (state.selected !== name) return;
  renderExportList();
  renderMetadata(info);
  const hash = readHash();
  const size = info.size;
  if (fromHash && hash.start !== null && hash.end !== null && hash.end > hash.start) {
    setView(hash.start, hash.end, { load: false });
  } else if (changed || state.view.end > size || state.view.end === 0) {
    setView(0, size, { load: false });
  } else {
    setView(state.view.start, state.view.end, { load: false });
  }
  if (fromHash && hash.offset !== null) state.hex.offset = hash.offset;
  else if (changed) state.hex.offset = 0;
  if (fromHash && hash.length !== null) state.hex.length = hash.length;
  $('hex-offset').value = String(state.hex.offset);
  $('hex-length').value = String(state.hex.length);
  loadMap();
  readHex();
}

function renderMetadata(info, error = null) {
  const panel = $('export-metadata');
  if (!info) {
    panel.replaceChildren(el('p', { class: 'status', text: error ? `No metadata: ${error.message}` : 'Select an export.' }));
    return;
  }
  const row = (label, field, value, ...content) => [
    el('dt', { text: label }),
    el('dd', { dataset: { field, value: String(value) } }, ...content),
  ];
  const block = info.block_size ?? {};
  const blockText = (value) => (value === 4294967295 ? 'no limit'
    : value < KIB ? `${exact(value)} byte${value === 1 ? '' : 's'}` : [human(value), el('span', { class: 'exact', text: ` (${exact(value)})` })]);
  const flags = el('ul', { class: 'flags', 'aria-label': 'Capabilities' },
    FLAG_LABELS.map(([key, label]) => el('li', {
      class: `flag ${info[key] ? 'on' : 'off'}`,
      dataset: { flag: key, value: String(Boolean(info[key])) },
    }, label, el('span', { class: 'visually-hidden', text: info[key] ? ': yes' : ': no' }))));
  const contexts = Array.isArray(info.contexts) ? info.contexts : [];
  panel.replaceChildren(el('dl', {},
    row('Name', 'name', info.name, el('span', { class: 'mono', text: info.name === '' ? '(default export)' : info.name })),
    info.description ? row('Description', 'description', info.description, info.description) : [],
    row('Size', 'size', info.sizeText,
      el('span', { class: 'figure', text: human(info.size) }), el('span', { class: 'exact block', text: `${exact(info.sizeText)} bytes` })),
    row('Access', 'read_only', info.read_only,
      el('span', { class: `badge ${info.read_only ? 'ro' : 'rw'}`, text: info.read_only ? 'read-only' : 'read-write' })),
    row('Capabilities', 'flags', FLAG_LABELS.filter(([k]) => info[k]).map(([k]) => k).join(','), flags),
    row('Minimum block', 'block_minimum', block.minimum, blockText(block.minimum)),
    row('Preferred block', 'block_preferred', block.preferred, blockText(block.preferred)),
    row('Maximum block', 'block_maximum', block.maximum, blockText(block.maximum)),
    row('Meta contexts', 'contexts', contexts.join(','), contexts.length ? contexts.join(', ') : 'none'),
    row('Structured replies', 'structured_replies', info.structured_replies, info.structured_replies ? 'yes' : 'no'),
    row('Across gateways', 'consistent_across_gateways', info.consistent_across_gateways,
      info.consistent_across_gateways ? 'consistent (multi-conn)' : 'not consistent: route this export to one gateway'),
  ));
}

// ---------------------------------------------------------------------------------------------
// Extent cache: what is known of an export's allocation, as sorted, non-overlapping segments.
// NBD block status is exact, so a range once described stays known until "Refresh".

class ExtentCache {
  constructor() { this.segments = []; } // [{s, e, k}], sorted by s

  /** Index of the first segment whose end is past `offset`. */
  firstEndingAfter(offset) {
    let lo = 0, hi = this.segments.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.segments[mid].e <= offset) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  /** Replaces what is known of [start, end) by `pieces` (contiguous, covering it). */
  insert(start, end, pieces) {
    if (this.segments.length > MAX_CACHED_SEGMENTS) this.segments = [];
    const list = this.segments;
    let i = this.firstEndingAfter(start);
    const replaced = [];
    let j = i;
    while (j < list.length && list[j].s < end) { replaced.push(list[j]); j++; }
    const before = replaced.length && replaced[0].s < start ? { s: replaced[0].s, e: start, k: replaced[0].k } : null;
    const last = replaced[replaced.length - 1];
    const after = replaced.length && last.e > end ? { s: end, e: last.e, k: last.k } : null;
    const merged = [];
    for (const piece of [before, ...pieces, after]) {
      if (!piece || piece.e <= piece.s) continue;
      const previous = merged[merged.length - 1];
      if (previous && previous.k === piece.k && previous.e === piece.s) previous.e = piece.e;
      else merged.push({ ...piece });
    }
    // concat, not splice(...merged): an answer may hold more extents than a call takes arguments.
    this.segments = list.slice(0, i).concat(merged, list.slice(j));
    const segmentsNow = this.segments;
    // Merge with the neighbours on both sides.
    const edges = [i + merged.length - 1, i - 1];
    for (const at of edges) {
      if (at >= 0 && at + 1 < segmentsNow.length && segmentsNow[at].k === segmentsNow[at + 1].k && segmentsNow[at].e === segmentsNow[at + 1].s) {
        segmentsNow[at].e = segmentsNow[at + 1].e;
        segmentsNow.splice(at + 1, 1);
      }
    }
  }

  /** The view's segments, clipped, with the unknown gaps as kind "unknown", merged. */
  describe(start, end) {
    const out = [];
    const push = (s, e, k) => {
      if (e <= s) return;
      const previous = out[out.length - 1];
      if (previous && previous[2] === k && previous[1] === s) previous[1] = e;
      else out.push([s, e, k]);
    };
    let position = start;
    for (let i = this.firstEndingAfter(start); i < this.segments.length && this.segments[i].s < end; i++) {
      const segment = this.segments[i];
      if (segment.s > position) push(position, Math.min(segment.s, end), 'unknown');
      push(Math.max(segment.s, start), Math.min(segment.e, end), segment.k);
      position = Math.min(segment.e, end);
    }
    if (position < end) push(position, end, 'unknown');
    return out;
  }
}

function cacheFor(name) {
  if (!state.caches.has(name)) state.caches.set(name, new ExtentCache());
  return state.caches.get(name);
}

const kindOf = (extent) => (extent.hole ? 'hole' : extent.zero ? 'zero' : 'data');

// ---------------------------------------------------------------------------------------------
// The map's view and its loading

function setView(start, end, { load = true } = {}) {
  const info = currentInfo();
  const size = info ? info.size : 0;
  start = Math.max(0, Math.min(Math.floor(start), size));
  end = Math.max(0, Math.min(Math.ceil(end), size));
  if (end <= start) {
    if (size === 0) { start = 0; end = 0; } else if (start >= size) { start = size - 1; end = size; } else end = start + 1;
  }
  state.view = { start, end };
  $('map-start').value = String(start);
  $('map-end').value = String(end);
  $('map-start').removeAttribute('aria-invalid');
  $('map-end').removeAttribute('aria-invalid');
  writeHash();
  if (load) loadMap();
}

function zoom(factor, centre = (state.view.start + state.view.end) / 2) {
  const info = currentInfo();
  if (!info) return;
  const length = state.view.end - state.view.start;
  let newLength = Math.max(1, Math.round(length * factor));
  newLength = Math.min(newLength, info.size);
  let start = Math.round(centre - newLength / 2);
  start = Math.max(0, Math.min(start, info.size - newLength));
  setView(start, start + newLength);
}

function pan(fraction) {
  const info = currentInfo();
  if (!info) return;
  const length = state.view.end - state.view.start;
  let start = state.view.start + Math.round(length * fraction);
  start = Math.max(0, Math.min(start, info.size - length));
  setView(start, start + length);
}

function setMapState(value) {
  $('allocation-map').dataset.state = value;
}

/** Loads what the view lacks, piece by piece, at most MAX_EXTENT_REQUESTS_PER_VIEW requests. */
async function loadMap({ more = false } = {}) {
  const info = currentInfo();
  const name = state.selected;
  state.mapAbort?.abort();
  const generation = ++state.mapGeneration;
  const abort = new AbortController();
  state.mapAbort = abort;
  if (!more) state.mapRequestsLeft = MAX_EXTENT_REQUESTS_PER_VIEW;
  else state.mapRequestsLeft += MAX_EXTENT_REQUESTS_PER_VIEW;
  $('map-load-more').hidden = true;
  state.mapSegments = [];
  if (!info) { drawMap(); return; }
  if (info.size === 0) {
    setMapState('empty');
    updateMapTexts('empty');
    drawMap();
    return;
  }
  if (!(info.contexts ?? []).includes('base:allocation')) {
    state.mapSegments = [[state.view.start, state.view.end, 'unknown']];
    setMapState('unsupported');
    updateMapTexts('unsupported');
    drawMap();
    return;
  }
  const { start, end } = state.view;
  const cache = cacheFor(name);
  const gaps = cache.describe(start, end).filter((s) => s[2] === 'unknown');
  setMapState(gaps.length ? 'loading' : 'done');
  refreshMapFromCache();
  let partial = false;
  try {
    outer: for (const [gapStart, gapEnd] of gaps) {
      let position = gapStart;
      // The first request asks for the whole gap. After an answer that covered less, the next
      // asks for 8 times what that one covered: a server that stops early is not made to
      // describe the whole rest of a huge fragmented disk again for each piece.
      let ask = gapEnd - gapStart;
      while (position < gapEnd) {
        if (state.mapRequestsLeft <= 0) { partial = true; break outer; }
        state.mapRequestsLeft -= 1;
        const length = Math.min(ask, gapEnd - position);
        const path = `${exportPath(name, 'extents')}?offset=${position}&length=${length}`;
        const { json } = await apiJSON(path, { signal: abort.signal });
        if (generation !== state.mapGeneration) return;
        const pieces = [];
        let cursor = Number(json.offset);
        for (const extent of json.extents ?? []) {
          const s = Number(extent.offset), e = s + Number(extent.length);
          if (e <= cursor) continue;
          pieces.push({ s: Math.max(s, cursor), e: Math.min(e, gapEnd), k: kindOf(extent) });
          cursor = Math.min(e, gapEnd);
          if (cursor >= gapEnd) break;
        }
        const covered = Math.min(Number(json.offset) + Number(json.length), cursor, gapEnd);
        if (!(covered > position)) {
          throw new ApiError({ message: `the gateway described no bytes at offset ${position}`, path });
        }
        if (covered - position < length) ask = Math.max(MIB, 8 * (covered - position));
        cache.insert(position, covered, pieces.filter((p) => p.s < covered).map((p) => ({ ...p, e: Math.min(p.e, covered) })));
        position = covered;
        refreshMapFromCache();
      }
    }
  } catch (error) {
    if (isAbort(error) || generation !== state.mapGeneration) return;
    setMapState('error');
    refreshMapFromCache('error');
    if (error instanceof ApiError && error.status === 501) {
      updateMapTexts('unsupported', error.message);
      return;
    }
    showError(error, 'Loading the allocation map');
    return;
  }
  if (generation !== state.mapGeneration) return;
  setMapState(partial ? 'partial' : 'done');
  refreshMapFromCache(partial ? 'partial' : 'done');
  $('map-load-more').hidden = !partial;
  // One announcement per finished load (the totals themselves change at every piece).
  $('map-live').textContent = `Map loaded${partial ? ' in part' : ''}. ${$('map-summary').textContent}`;
}

function refreshMapFromCache(phase = null) {
  const { start, end } = state.view;
  state.mapSegments = state.selected === null ? [] : cacheFor(state.selected).describe(start, end);
  drawMap();
  updateMapTexts(phase ?? $('allocation-map').dataset.state);
}

// ---------------------------------------------------------------------------------------------
// Totals, summary and the extent table (the map's text equivalent)

function updateMapTexts(phase, note = '') {
  const canvas = $('allocation-map');
  const totalsBox = $('allocation-totals');
  const { start, end } = state.view;
  const name = state.selected ?? '';
  canvas.dataset.start = String(start);
  canvas.dataset.end = String(end);
  canvas.dataset.export = name;
  const segments = state.mapSegments;
  canvas.dataset.segmentCount = String(segments.length);
  if (segments.length <= MAX_SEGMENTS_ATTRIBUTE) {
    canvas.dataset.segments = JSON.stringify(segments);
    delete canvas.dataset.segmentsTruncated;
  } else {
    canvas.dataset.segments = JSON.stringify(segments.slice(0, MAX_SEGMENTS_ATTRIBUTE));
    canvas.dataset.segmentsTruncated = 'true';
  }
  canvas.setAttribute('aria-label',
    `Allocation map of ${name === '' ? 'the default export' : name}, bytes ${exact(start)} to ${exact(end)}`);

  const totals = { data: 0, zero: 0, hole: 0, unknown: 0 };
  const counts = { data: 0, zero: 0, hole: 0, unknown: 0 };
  for (const [s, e, k] of segments) { totals[k] += e - s; counts[k] += 1; }
  for (const k of Object.keys(totals)) totalsBox.dataset[k] = String(totals[k]);
  totalsBox.dataset.partial = String(phase === 'partial');
  totalsBox.dataset.state = phase;

  if (phase === 'empty') {
    totalsBox.replaceChildren(el('p', { class: 'status', text: 'This export is empty (0 bytes).' }));
    $('map-summary').textContent = '';
    renderExtentTable([]);
    return;
  }
  if (phase === 'unsupported') {
    totalsBox.replaceChildren(el('p', { class: 'status',
      text: `No allocation map: this export did not negotiate base:allocation${note ? ` (${note})` : ''}. Its bytes can still be read below.` }));
    $('map-summary').textContent = '';
    renderExtentTable([]);
    return;
  }
  const length = end - start;
  const share = (bytes) => {
    if (!length) return '';
    const percent = 100 * bytes / length;
    if (bytes > 0 && percent < 0.01) return ' · <0.01%';
    if (bytes < length && percent > 99.99) return ' · >99.99%';
    return ` · ${percent.toFixed(bytes && bytes < length ? 2 : 0)}%`;
  };
  const total = (kind, label) => el('div', { class: `total ${kind}` },
    el('span', { class: 'total-label', text: label }),
    el('span', { class: 'total-value', text: human(totals[kind]) }),
    el('span', { class: 'exact', text: `${exact(totals[kind])} bytes${share(totals[kind])}` }));
  const children = [
    total('data', 'Data'),
    total('zero', 'Zero'),
    total('hole', 'Hole'),
  ];
  if (totals.unknown) children.push(total('unknown', phase === 'loading' ? 'Loading' : 'Not loaded'));
  if (phase === 'partial') {
    children.push(el('p', { class: 'partial-note',
      text: `Partial: stopped after ${MAX_EXTENT_REQUESTS_PER_VIEW} requests for this view (a fragmented disk); ${human(totals.unknown)} not loaded. Zoom in, or load more.` }));
  } else if (phase === 'error') {
    children.push(el('p', { class: 'partial-note', text: 'Loading stopped on an error (see above).' }));
  }
  totalsBox.replaceChildren(...children);

  const parts = [];
  parts.push(`Showing ${humanExact(length)} from offset ${exact(start)} to ${exact(end)}.`);
  const describe = (kind, singular, plural) => (counts[kind] ? `${counts[kind]} ${counts[kind] === 1 ? singular : plural}` : null);
  const kinds = [describe('data', 'data extent', 'data extents'), describe('zero', 'zero extent', 'zero extents'),
    describe('hole', 'hole', 'holes')].filter(Boolean);
  if (kinds.length) parts.push(`${kinds.join(', ')}.`);
  const firstData = segments.find((s) => s[2] === 'data');
  if (firstData) parts.push(`First data at offset ${exact(firstData[0])}.`);
  if (phase === 'loading') parts.push('Loading…');
  $('map-summary').textContent = parts.join(' ');
  renderExtentTable(segments);
}

function renderExtentTable(segments) {
  $('extent-summary').textContent = `Extents in view (${segments.length}${segments.length > MAX_TABLE_ROWS ? `, first ${MAX_TABLE_ROWS} listed` : ''})`;
  const details = $('extent-details');
  if (!details.open && segments.length > 0) {
    // Built only when opened: a large list is not rendered for nothing.
    $('extent-table-wrap').replaceChildren();
    return;
  }
  const rows = segments.slice(0, MAX_TABLE_ROWS).map(([s, e, k]) => el('tr', {},
    el('td', {}, el('span', { class: 'kind' }, el('span', { class: `swatch ${k}`, 'aria-hidden': 'true' }), KIND_LABELS[k])),
    el('td', { class: 'num', text: exact(s) }),
    el('td', { class: 'num', text: exact(e) }),
    el('td', { class: 'num', text: humanExact(e - s) }),
    el('td', { class: 'actions' },
      el('button', { type: 'button', class: 'small', 'aria-label': `Zoom the map to the ${KIND_LABELS[k]} extent at ${exact(s)}`,
        on: { click: () => setView(s, e) }, text: 'Zoom' }),
      el('button', { type: 'button', class: 'small', 'aria-label': `Show the bytes at ${exact(s)}`,
        on: { click: () => showBytesAt(s, Math.min(e - s, DEFAULT_HEX_LENGTH)) }, text: 'Bytes' }))));
  if (rows.length === 0) {
    $('extent-table-wrap').replaceChildren(el('p', { class: 'status', text: 'Nothing to list.' }));
    return;
  }
  const table = el('table', { class: 'extents' },
    el('caption', { class: 'visually-hidden', text: 'Extents of the range shown on the map' }),
    el('thead', {}, el('tr', {},
      el('th', { scope: 'col', text: 'Kind' }), el('th', { scope: 'col', class: 'num', text: 'Start' }),
      el('th', { scope: 'col', class: 'num', text: 'End' }), el('th', { scope: 'col', class: 'num', text: 'Length' }),
      el('th', { scope: 'col', text: 'Actions' }))),
    el('tbody', {}, rows));
  $('extent-table-wrap').replaceChildren(table);
}

// ---------------------------------------------------------------------------------------------
// Drawing the map on the canvas

const MAP = { top: 6, bar: 88, axis: 26 }; // CSS pixels: bar from `top`, then ticks and labels

function palette() {
  const style = getComputedStyle(document.documentElement);
  const get = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  return {
    data: get('--data', '#2f6fd6'), zero: get('--zero', '#e39a17'),
    hole: get('--hole', '#e9edf2'), holeStripe: get('--hole-stripe', '#c3ccd8'),
    unknown: get('--unknown', '#8a94a3'), unknownStripe: get('--unknown-stripe', '#ffffff'),
    fg: get('--fg', '#1d2430'), muted: get('--muted', '#5b6575'), panel: get('--panel', '#ffffff'),
    grid: get('--grid', 'rgba(0,0,0,0.3)'), selection: get('--selection', 'rgba(194,65,12,0.22)'),
    focus: get('--focus', '#c2410c'), sans: get('--sans', 'sans-serif'),
  };
}

function stripes(ctx, background, stripe, dpr, angle) {
  const size = Math.max(4, Math.round(6 * dpr));
  const tile = document.createElement('canvas');
  tile.width = size;
  tile.height = size;
  const t = tile.getContext('2d');
  t.fillStyle = background;
  t.fillRect(0, 0, size, size);
  t.strokeStyle = stripe;
  t.lineWidth = Math.max(1, dpr * 1.4);
  t.beginPath();
  for (let k = -1; k <= 1; k++) {
    if (angle > 0) { t.moveTo(k * size, size); t.lineTo(k * size + size, 0); } else { t.moveTo(k * size, 0); t.lineTo(k * size + size, size); }
  }
  t.stroke();
  return ctx.createPattern(tile, 'repeat');
}

function drawMap() {
  const canvas = $('allocation-map');
  const dpr = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 800;
  const cssHeight = canvas.clientHeight || MAP.top + MAP.bar + MAP.axis;
  const W = Math.max(1, Math.round(cssWidth * dpr));
  const H = Math.max(1, Math.round(cssHeight * dpr));
  if (canvas.width !== W) canvas.width = W;
  if (canvas.height !== H) canvas.height = H;
  const ctx = canvas.getContext('2d');
  const colors = palette();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = colors.panel;
  ctx.fillRect(0, 0, W, H);
  const top = Math.round(MAP.top * dpr);
  const barHeight = Math.round(MAP.bar * dpr);
  canvas.dataset.barTop = String(top); // device pixels, for tests that sample the drawing
  canvas.dataset.barHeight = String(barHeight);
  const { start, end } = state.view;
  const length = end - start;
  if (!(length > 0) || state.selected === null) {
    ctx.fillStyle = colors.muted;
    ctx.font = `${13 * dpr}px ${colors.sans}`;
    ctx.fillText(state.selected === null ? 'No export selected' : 'Empty export', 10 * dpr, top + barHeight / 2);
    return;
  }

  // Bytes of each kind under each device-pixel column, as fractions of the column.
  const columns = { data: new Float64Array(W), zero: new Float64Array(W), hole: new Float64Array(W), unknown: new Float64Array(W) };
  const scale = W / length;
  for (const [s, e, k] of state.mapSegments) {
    const x0 = (s - start) * scale, x1 = (e - start) * scale;
    const c0 = Math.max(0, Math.floor(x0)), c1 = Math.min(W - 1, Math.ceil(x1) - 1);
    const column = columns[k];
    if (c0 === c1) { column[c0] += x1 - x0; continue; }
    column[c0] += c0 + 1 - x0;
    for (let c = c0 + 1; c < c1; c++) column[c] += 1;
    column[c1] += x1 - c1;
  }
  const holePattern = stripes(ctx, colors.hole, colors.holeStripe, dpr, 1);
  const unknownPattern = stripes(ctx, colors.unknown, colors.unknownStripe, dpr, -1);
  const minimum = Math.max(2, Math.round(2 * dpr)); // any data or zero at all stays visible
  const fills = { data: colors.data, zero: colors.zero, unknown: unknownPattern, hole: holePattern };
  // Runs of identical columns are filled at once; mixed columns are stacked bottom-up:
  // data, zero, not loaded, hole.
  let runKind = null, runStart = 0;
  const flush = (x) => {
    if (runKind !== null && x > runStart) {
      ctx.fillStyle = fills[runKind];
      ctx.fillRect(runStart, top, x - runStart, barHeight);
    }
    runKind = null;
  };
  for (let x = 0; x < W; x++) {
    const d = columns.data[x], z = columns.zero[x], h = columns.hole[x], u = columns.unknown[x];
    const sum = d + z + h + u;
    const pure = sum <= 0 ? 'hole' : d >= sum * 0.999 ? 'data' : z >= sum * 0.999 ? 'zero' : h >= sum * 0.999 ? 'hole' : u >= sum * 0.999 ? 'unknown' : null;
    if (pure !== null) {
      if (runKind !== pure) { flush(x); runKind = pure; runStart = x; }
      continue;
    }
    flush(x);
    let y = top + barHeight;
    for (const [kind, amount] of [['data', d], ['zero', z], ['unknown', u]]) {
      if (amount <= 0) continue;
      const height = Math.min(y - top, Math.max(minimum, Math.round(barHeight * amount / sum)));
      ctx.fillStyle = fills[kind];
      ctx.fillRect(x, y - height, 1, height);
      y -= height;
    }
    if (y > top) { ctx.fillStyle = holePattern; ctx.fillRect(x, top, 1, y - top); }
  }
  flush(W);

  // Small extents stay visible: a column holding some data (or zero) but not only that gets a
  // mark at least 2 CSS pixels wide and a third of the bar high, drawn over its neighbours.
  const markWidth = Math.max(2, Math.round(2 * dpr));
  const markHeight = Math.round(barHeight / 3);
  for (const kind of ['zero', 'data']) {
    const column = columns[kind];
    ctx.fillStyle = fills[kind];
    for (let x = 0; x < W; x++) {
      const amount = column[x];
      if (amount <= 0) continue;
      const sum = columns.data[x] + columns.zero[x] + columns.hole[x] + columns.unknown[x];
      if (amount >= sum * 0.999) continue;
      const height = Math.max(markHeight, Math.round(barHeight * amount / sum));
      const left = Math.max(0, Math.min(W - markWidth, x - (markWidth >> 1)));
      ctx.fillRect(left, top + barHeight - height, markWidth, height);
    }
  }

  // Block boundaries once a block is at least 8 CSS pixels wide.
  const info = currentInfo();
  const block = info?.block_size?.preferred || info?.block_size?.minimum || 0;
  if (block > 0 && block * scale >= 8 * dpr) {
    ctx.fillStyle = colors.grid;
    for (let b = Math.ceil(start / block) * block; b <= end; b += block) {
      const x = Math.round((b - start) * scale);
      ctx.fillRect(Math.min(x, W - 1), top, 1, barHeight);
    }
  }

  // Axis: ticks at powers of two about every 110 CSS pixels, labelled in exact short form.
  const axisTop = top + barHeight;
  ctx.fillStyle = colors.muted;
  ctx.fillRect(0, axisTop, W, Math.max(1, Math.round(dpr)));
  const rawStep = length * (110 * dpr) / W;
  const step = Math.max(1, 2 ** Math.ceil(Math.log2(Math.max(rawStep, 1))));
  ctx.font = `${11 * dpr}px ${colors.sans}`;
  ctx.textBaseline = 'top';
  let lastLabelEnd = -Infinity;
  for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
    const x = Math.round((t - start) * scale);
    ctx.fillStyle = colors.muted;
    ctx.fillRect(Math.min(x, W - 1), axisTop, Math.max(1, Math.round(dpr)), Math.round(5 * dpr));
    const label = axisLabel(t);
    const width = ctx.measureText(label).width;
    let lx = x - width / 2;
    lx = Math.max(2 * dpr, Math.min(lx, W - width - 2 * dpr));
    if (lx < lastLabelEnd + 8 * dpr) continue;
    ctx.fillStyle = colors.fg;
    ctx.fillText(label, lx, axisTop + 8 * dpr);
    lastLabelEnd = lx + width;
  }

  // Drag selection and hover line.
  if (state.drag) {
    const a = Math.min(state.drag.x0, state.drag.x1) * dpr, b = Math.max(state.drag.x0, state.drag.x1) * dpr;
    ctx.fillStyle = colors.selection;
    ctx.fillRect(a, top, Math.max(1, b - a), barHeight);
    ctx.fillStyle = colors.focus;
    ctx.fillRect(a, top, Math.max(1, dpr), barHeight);
    ctx.fillRect(b, top, Math.max(1, dpr), barHeight);
  } else if (state.hoverX !== null) {
    ctx.fillStyle = colors.focus;
    ctx.fillRect(Math.round(state.hoverX * dpr), top, Math.max(1, Math.round(dpr)), barHeight);
  }
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawMap(); });
}

// ---------------------------------------------------------------------------------------------
// Mouse and touch on the map: click zooms in 4× there, a drag zooms to the dragged region.

function byteAt(canvas, cssX) {
  const { start, end } = state.view;
  const width = canvas.clientWidth || 1;
  const fraction = Math.max(0, Math.min(1, cssX / width));
  return Math.min(end - 1, Math.max(start, Math.floor(start + fraction * (end - start))));
}

function segmentAt(offset) {
  const segments = state.mapSegments;
  let lo = 0, hi = segments.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (segments[mid][1] <= offset) lo = mid + 1;
    else if (segments[mid][0] > offset) hi = mid - 1;
    else return segments[mid];
  }
  return null;
}

function setupMapPointer() {
  const canvas = $('allocation-map');
  const cssX = (event) => event.clientX - canvas.getBoundingClientRect().left;
  canvas.addEventListener('pointerdown', (event) => {
    if (event.button !== 0 || !(state.view.end > state.view.start)) return;
    canvas.setPointerCapture(event.pointerId);
    const x = cssX(event);
    state.drag = { x0: x, x1: x, moved: false };
    scheduleDraw();
  });
  canvas.addEventListener('pointermove', (event) => {
    const x = cssX(event);
    state.hoverX = x;
    if (state.drag) {
      state.drag.x1 = x;
      if (Math.abs(state.drag.x1 - state.drag.x0) > 4) state.drag.moved = true;
    }
    if (state.view.end > state.view.start) {
      const offset = byteAt(canvas, x);
      const segment = segmentAt(offset);
      let text = `offset ${exact(offset)} (${hex(offset)})`;
      if (segment) text += ` · ${KIND_LABELS[segment[2]]} from ${exact(segment[0])} to ${exact(segment[1])} (${human(segment[1] - segment[0])})`;
      if (state.drag?.moved) {
        const a = byteAt(canvas, Math.min(state.drag.x0, state.drag.x1));
        const b = byteAt(canvas, Math.max(state.drag.x0, state.drag.x1)) + 1;
        text = `zoom to ${exact(a)} – ${exact(b)} (${human(b - a)})`;
      }
      $('map-cursor').textContent = text;
    }
    scheduleDraw();
  });
  const finish = (event, cancelled) => {
    const drag = state.drag;
    state.drag = null;
    if (!drag) return;
    if (canvas.hasPointerCapture?.(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
    if (cancelled) { scheduleDraw(); return; }
    if (drag.moved) {
      const a = byteAt(canvas, Math.min(drag.x0, drag.x1));
      const b = byteAt(canvas, Math.max(drag.x0, drag.x1)) + 1;
      setView(a, Math.max(b, a + 1));
    } else {
      zoom(0.25, byteAt(canvas, drag.x0) + 0.5);
    }
  };
  canvas.addEventListener('pointerup', (event) => finish(event, false));
  canvas.addEventListener('pointercancel', (event) => finish(event, true));
  canvas.addEventListener('pointerleave', () => {
    if (state.drag) return;
    state.hoverX = null;
    $('map-cursor').textContent = '\u200b';
    scheduleDraw();
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && state.drag) { state.drag = null; scheduleDraw(); }
  });
  new ResizeObserver(scheduleDraw).observe(canvas);
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener?.('change', scheduleDraw);
}

// ---------------------------------------------------------------------------------------------
// The hex view: `Range: bytes=a-b` on exports/NAME/data

function showBytesAt(offset, length) {
  $('hex-offset').value = String(offset);
  $('hex-length').value = String(Math.max(1, length));
  readHex({ fromForm: true });
  $('hex-panel').scrollIntoView({ block: 'nearest' });
  $('hex-view').focus({ preventScroll: true });
}

function hexFormError(input, message) {
  input.setAttribute('aria-invalid', 'true');
  const status = $('hex-status');
  status.textContent = message;
  status.classList.add('warning');
  input.focus();
}

async function readHex({ fromForm = false, delta = 0 } = {}) {
  const info = currentInfo();
  const name = state.selected;
  const view = $('hex-view');
  const status = $('hex-status');
  status.classList.remove('warning');
  if (!info) return;
  const offsetInput = $('hex-offset'), lengthInput = $('hex-length');
  offsetInput.removeAttribute('aria-invalid');
  lengthInput.removeAttribute('aria-invalid');
  let offset, length;
  try { offset = parseBytes(offsetInput.value, 'Offset'); } catch (error) { hexFormError(offsetInput, error.message); return; }
  try { length = parseBytes(lengthInput.value, 'Length'); } catch (error) { hexFormError(lengthInput, error.message); return; }
  if (length < 1) { hexFormError(lengthInput, 'Length: at least 1 byte'); return; }
  if (length > MAX_HEX_LENGTH) {
    length = MAX_HEX_LENGTH;
    lengthInput.value = String(length);
  }
  offset = Math.max(0, offset + delta * length);
  if (info.size === 0) { view.textContent = ''; status.textContent = 'This export is empty.'; return; }
  if (offset >= info.size) {
    if (delta > 0) offset = Math.max(0, info.size - length);
    else { hexFormError(offsetInput, `Offset: past the end of the export (size ${exact(info.sizeText)} bytes)`); return; }
  }
  const last = Math.min(info.size, offset + length) - 1;
  length = last - offset + 1;
  offsetInput.value = String(offset);
  state.hex = { offset, length: parseBytes(lengthInput.value, 'Length') };
  writeHash();

  state.hexAbort?.abort();
  const abort = new AbortController();
  state.hexAbort = abort;
  view.dataset.state = 'loading';
  view.classList.add('loading');
  status.textContent = `Reading ${humanExact(length)} at offset ${exact(offset)}…`;
  const path = exportPath(name, 'data');
  try {
    const response = await api(path, { headers: { Range: `bytes=${offset}-${last}` }, signal: abort.signal });
    if (!response.ok) throw await errorFrom(response, path);
    // 206 with Content-Range is the answer asked for; a 200 (range ignored) starts at byte 0.
    let first = 0;
    if (response.status === 206) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(response.headers.get('Content-Range') ?? '');
      if (!range) throw new ApiError({ message: 'the answer has no usable Content-Range', status: 206, path });
      first = Number(range[1]);
    }
    const bytes = await readBody(response, offset - first, length);
    if (abort.signal.aborted) return;
    view.classList.remove('loading');
    renderHex(view, offset, bytes, info.size);
    view.dataset.offset = String(offset);
    view.dataset.length = String(bytes.length);
    view.dataset.export = name;
    view.dataset.state = 'done';
    view.setAttribute('aria-label', `Hex and ASCII dump of bytes ${exact(offset)} to ${exact(offset + bytes.length - 1)}`);
    status.textContent = `Bytes ${exact(offset)} to ${exact(offset + bytes.length - 1)} (${hex(offset)}–${hex(offset + bytes.length - 1)}), ${humanExact(bytes.length)}${bytes.length < length ? ': the answer ended early' : ''}.`;
    if (fromForm) view.scrollTop = 0;
  } catch (error) {
    if (isAbort(error)) return;
    view.dataset.state = 'error';
    view.classList.remove('loading');
    status.textContent = 'The bytes could not be read.';
    showError(error, `Reading bytes ${exact(offset)}–${exact(last)}`);
  }
}

/** Reads `length` bytes after skipping `skip`, then stops the download (never the whole disk). */
async function readBody(response, skip, length) {
  const out = new Uint8Array(length);
  let filled = 0, position = 0;
  const reader = response.body.getReader();
  try {
    while (filled < length) {
      const { value, done } = await reader.read();
      if (done) break;
      const chunkStart = Math.max(0, skip - position);
      if (chunkStart < value.length) {
        const piece = value.subarray(chunkStart, Math.min(value.length, chunkStart + (length - filled)));
        out.set(piece, filled);
        filled += piece.length;
      }
      position += value.length;
    }
  } finally {
    if (filled >= length) reader.cancel().catch(() => {});
  }
  return out.subarray(0, filled);
}

/** Classic 16 bytes a row: "00000000  68 65 6c 6c 6f 2c 20 64  69 73 6b 00 00 00 00 00  |hello, disk.....|". */
function renderHex(view, offset, bytes, size) {
  const width = Math.max(8, Math.ceil(Math.log2(Math.max(size, 2)) / 4));
  const hexByte = [];
  for (let i = 0; i < 256; i++) hexByte.push(i.toString(16).padStart(2, '0'));
  const lines = [];
  for (let row = 0; row < bytes.length; row += 16) {
    let hexPart = '', ascii = '';
    for (let i = 0; i < 16; i++) {
      if (i === 8) hexPart += ' ';
      if (row + i < bytes.length) {
        const b = bytes[row + i];
        hexPart += hexByte[b] + ' ';
        ascii += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.';
      } else {
        hexPart += '   ';
      }
    }
    lines.push(`${(offset + row).toString(16).padStart(width, '0')}  ${hexPart} |${ascii}|`);
  }
  view.textContent = lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Live figures from GET metrics (Prometheus text), every 5 s

const metricsState = { timer: null, paused: false, previous: null };

function parsePrometheus(text) {
  const samples = [];
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    const labelPattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    let label;
    while ((label = labelPattern.exec(match[2] ?? '')) !== null) {
      labels[label[1]] = label[2].replace(/\\n/g, '\n').replace(/\\(.)/g, '$1');
    }
    samples.push({ name: match[1], labels, value: Number(match[3] === '+Inf' ? Infinity : match[3]) });
  }
  return samples;
}

function sumBy(samples, name, key) {
  const out = new Map();
  for (const sample of samples) {
    if (sample.name !== name) continue;
    const group = key ? key(sample.labels) : '';
    out.set(group, (out.get(group) ?? 0) + sample.value);
  }
  return out;
}

const total = (map) => [...map.values()].reduce((a, b) => a + b, 0);

async function pollMetrics() {
  clearTimeout(metricsState.timer);
  if (!metricsState.paused && !document.hidden) {
    try { await loadMetrics(); } catch (error) { if (!isAbort(error)) renderMetricsError(error); }
  }
  metricsState.timer = setTimeout(pollMetrics, METRICS_INTERVAL_MS);
}

async function loadMetrics() {
  const box = $('metrics');
  const response = await api('metrics');
  if (response.status === 403) {
    const error = await errorFrom(response, 'metrics');
    box.dataset.state = 'denied';
    box.replaceChildren(
      el('p', { class: 'denied', text: 'Metrics are not available with this token.' }),
      el('p', { class: 'hint', text: `The gateway answered 403 ${error.code || 'forbidden'}: ${error.message}. Everything else keeps working.` }));
    $('metrics-updated').textContent = `Checked at ${new Date().toLocaleTimeString()}.`;
    return;
  }
  if (!response.ok) throw await errorFrom(response, 'metrics');
  const samples = parsePrometheus(await response.text());
  renderMetrics(samples);
}

function renderMetricsError(error) {
  const box = $('metrics');
  box.dataset.state = 'error';
  const detail = error instanceof ApiError && error.status ? ` (HTTP ${error.status}${error.code ? `, ${error.code}` : ''})` : '';
  box.replaceChildren(el('p', { class: 'denied', text: `The figures could not be read: ${error.message}${detail}` }));
}

function renderMetrics(samples) {
  const box = $('metrics');
  const now = Date.now();
  const byClass = sumBy(samples, 'nbd_gateway_requests_total', (l) => `${String(l.status ?? '?')[0]}xx`);
  const byServerStatus = sumBy(samples, 'nbd_gateway_requests_total', (l) => String(l.status ?? '?'));
  const requests = total(byClass);
  const read = total(sumBy(samples, 'nbd_gateway_nbd_read_bytes_total'));
  const written = total(sumBy(samples, 'nbd_gateway_nbd_written_bytes_total'));
  const nbdConnections = sumBy(samples, 'nbd_gateway_nbd_connections', (l) => l.export ?? '');
  const httpConnections = sumBy(samples, 'nbd_gateway_http_connections');
  const connectFailures = total(sumBy(samples, 'nbd_gateway_nbd_connect_failures_total'));
  const nbdErrors = sumBy(samples, 'nbd_gateway_nbd_errors_total', (l) => l.error ?? '?');
  const overloaded = total(sumBy(samples, 'nbd_gateway_overloaded_total'));
  const refused = sumBy(samples, 'nbd_gateway_connections_refused_total', (l) => l.limit ?? '?');
  // Other byte counters the gateway may grow (anything with "bytes" in its name, not a histogram).
  const known = new Set(['nbd_gateway_nbd_read_bytes_total', 'nbd_gateway_nbd_written_bytes_total']);
  const otherBytes = new Map();
  for (const sample of samples) {
    if (!/bytes/.test(sample.name) || known.has(sample.name) || /_(bucket|sum|count)$/.test(sample.name)) continue;
    otherBytes.set(sample.name, (otherBytes.get(sample.name) ?? 0) + sample.value);
  }

  const previous = metricsState.previous;
  const seconds = previous ? (now - previous.time) / 1000 : 0;
  const rate = (value, old) => (previous && seconds > 0 && value >= old ? (value - old) / seconds : null);
  const requestRate = rate(requests, previous?.requests);
  const readRate = rate(read, previous?.read);
  const writeRate = rate(written, previous?.written);
  metricsState.previous = { time: now, requests, read, written };

  const figure = (text, sub) => [el('span', { class: 'figure', text }), sub ? el('span', { class: 'sub', text: sub }) : null];
  const classes = ['2xx', '3xx', '4xx', '5xx'].filter((c) => byClass.has(c)).map((c) => `${c}: ${exact(byClass.get(c))}`);
  const serverErrors = [...byServerStatus].filter(([status]) => status.startsWith('5')).sort();
  const serverErrorTotal = serverErrors.reduce((sum, [, v]) => sum + v, 0);
  const errorNames = [...nbdErrors].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]);
  const dl = el('dl', {},
    el('dt', { text: 'Requests' }),
    el('dd', { dataset: { metric: 'requests', value: requests } },
      figure(exact(requests), [classes.join(' · '), requestRate !== null ? `${requestRate.toFixed(1)}/s` : null].filter(Boolean).join(' · '))),
    el('dt', { text: 'Bytes out (read from NBD)' }),
    el('dd', { dataset: { metric: 'read_bytes', value: read } },
      figure(human(read), `${exact(read)} bytes${readRate !== null ? ` · ${human(Math.round(readRate))}/s` : ''}`)),
    el('dt', { text: 'Bytes in (written to NBD)' }),
    el('dd', { dataset: { metric: 'written_bytes', value: written } },
      figure(human(written), `${exact(written)} bytes${writeRate !== null ? ` · ${human(Math.round(writeRate))}/s` : ''}`)),
    [...otherBytes].map(([name, value]) => [el('dt', { text: name }), el('dd', {}, figure(human(value), `${exact(value)} bytes`))]),
    el('dt', { text: 'NBD connections open' }),
    el('dd', { dataset: { metric: 'nbd_connections', value: total(nbdConnections) } },
      figure(exact(total(nbdConnections)),
        nbdConnections.size > 1 ? [...nbdConnections].map(([e, v]) => `${e || '(default)'}: ${v}`).join(' · ') : null)),
    httpConnections.size ? [el('dt', { text: 'HTTP connections open' }), el('dd', {}, figure(exact(total(httpConnections))))] : [],
    el('dt', { text: 'Server errors (5xx)' }),
    el('dd', { dataset: { metric: 'server_errors', value: serverErrorTotal } },
      figure(exact(serverErrorTotal), serverErrors.map(([s, v]) => `${s}: ${exact(v)}`).join(' · ') || null)),
    el('dt', { text: 'NBD errors' }),
    el('dd', { dataset: { metric: 'nbd_errors', value: total(nbdErrors) } },
      errorNames.length
        ? el('ul', {}, errorNames.map(([name, value]) => el('li', {}, el('span', { class: 'mono', text: name }), `: ${exact(value)}`)))
        : figure('none')),
    el('dt', { text: 'Failed NBD connects' }),
    el('dd', {}, figure(exact(connectFailures))),
    el('dt', { text: 'Overloaded (503)' }),
    el('dd', {}, figure(exact(overloaded))),
    refused.size ? [el('dt', { text: 'Connections refused' }),
      el('dd', {}, figure(exact(total(refused)), [...refused].map(([l, v]) => `${l}: ${v}`).join(' · ')))] : []);
  box.dataset.state = 'ok';
  box.dataset.requests = String(requests);
  box.replaceChildren(dl);
  $('metrics-updated').textContent = `Updated ${new Date(now).toLocaleTimeString()} · every ${METRICS_INTERVAL_MS / 1000} s.`;
}

function toggleMetricsPause() {
  metricsState.paused = !metricsState.paused;
  const button = $('metrics-pause');
  button.setAttribute('aria-pressed', String(metricsState.paused));
  button.textContent = metricsState.paused ? 'Resume updates' : 'Pause updates';
  if (!metricsState.paused) pollMetrics();
}

// ---------------------------------------------------------------------------------------------
// Wiring

function mapFormSubmit(event) {
  event.preventDefault();
  const info = currentInfo();
  if (!info) return;
  const startInput = $('map-start'), endInput = $('map-end');
  startInput.removeAttribute('aria-invalid');
  endInput.removeAttribute('aria-invalid');
  let start, end;
  try { start = parseBytes(startInput.value, 'Start'); } catch (error) { return mapInputError(startInput, error.message); }
  try { end = parseBytes(endInput.value, 'End'); } catch (error) { return mapInputError(endInput, error.message); }
  if (start >= info.size) return mapInputError(startInput, `Start: past the end (size ${exact(info.sizeText)} bytes)`);
  if (end <= start) return mapInputError(endInput, 'End: must be past the start');
  setView(start, Math.min(end, info.size));
}

function mapInputError(input, message) {
  input.setAttribute('aria-invalid', 'true');
  showError(new Error(message), 'Allocation map');
  input.focus();
}

function init() {
  $('token-form').addEventListener('submit', submitToken);
  $('forget-token').addEventListener('click', forgetToken);
  $('exports-reload').addEventListener('click', () => { state.metadata.clear(); loadExports(); });
  $('open-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('open-name').value;
    selectExport(name);
  });
  $('map-form').addEventListener('submit', mapFormSubmit);
  $('map-zoom-in').addEventListener('click', () => zoom(0.5));
  $('map-zoom-out').addEventListener('click', () => zoom(2));
  $('map-left').addEventListener('click', () => pan(-0.5));
  $('map-right').addEventListener('click', () => pan(0.5));
  $('map-all').addEventListener('click', () => { const info = currentInfo(); if (info) setView(0, info.size); });
  $('map-refresh').addEventListener('click', () => {
    if (state.selected !== null) state.caches.delete(state.selected);
    loadMap();
  });
  $('map-load-more').addEventListener('click', () => loadMap({ more: true }));
  $('extent-details').addEventListener('toggle', () => renderExtentTable(state.mapSegments));
  $('hex-form').addEventListener('submit', (event) => { event.preventDefault(); readHex({ fromForm: true }); });
  $('hex-prev').addEventListener('click', () => readHex({ delta: -1 }));
  $('hex-next').addEventListener('click', () => readHex({ delta: 1 }));
  $('metrics-pause').addEventListener('click', toggleMetricsPause);
  document.addEventListener('visibilitychange', () => { if (!document.hidden && !metricsState.paused) pollMetrics(); });
  window.addEventListener('hashchange', () => {
    const hash = readHash();
    if (hash.export !== null && hash.export !== state.selected) {
      selectExport(hash.export, { fromHash: true });
    } else if (hash.start !== null && hash.end !== null && (hash.start !== state.view.start || hash.end !== state.view.end)) {
      setView(hash.start, hash.end);
    }
  });
  setupMapPointer();
  updateTokenButton();
  drawMap();
  loadExports();
  pollMetrics();
}

init();
