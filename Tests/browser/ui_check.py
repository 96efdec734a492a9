#!/usr/bin/env python3
"""Checks the gateway's disk browser page in a real headless Chromium (Playwright).

Run against a gateway that serves the page (GET BASE/ → index.html, BASE/ui/app.js,
BASE/ui/style.css) and whose export NAME already holds the data named by --expect-data:

    python3 Tests/browser/ui_check.py --url http://127.0.0.1:PORT/ --export disk0 \\
        [--token TOKEN] [--expect-data OFFSET:HEXBYTES ...] [--hole-at OFFSET[:LENGTH] ...] \\
        [--screenshots DIR] [--allowed-origin-port PORT]

What it checks (each failure is one line `FAILED: check: why`; exit 0 only if all hold):
  page          the page loads with a Content-Security-Policy, its module runs, no CSP
                violation or uncaught error happens, lang/headings/labels are in place
  token         with --token: the page asks for it once (the "Access token" form), then works;
                without: it never asks
  exports       the export list shows exactly the names GET exports returns
  metadata      size, read_only, block sizes, capability flags and contexts shown equal GET
                exports/NAME (both the data-value attributes and the visible text)
  map           for each --expect-data and --hole-at, zoomed to a range around it: the drawn
                segments (#allocation-map data-segments) equal the API's extents for that range,
                the written bytes are data, the hole is hole, the totals add up, and the canvas
                pixels there have the data colour (or not)
  map-controls  zoom in / zoom out buttons, a click and a drag on the map change the range
  hex           for each --expect-data, #hex-view shows those bytes at those offsets
  keyboard      Tab reaches the export list, focus is visible, Enter selects
  error         opening a missing export shows the API's error (message, code) in #error
  metrics       #metrics shows figures when GET metrics answers 200, a plain refusal on 403
  cors          with --allowed-origin-port: a page served from http://127.0.0.1:PORT (started
                here) can fetch BASE/exports/NAME/data with Range bytes=0-3 (206, the bytes,
                Content-Range readable); a page from another free port is refused (TypeError)

Screenshots (list+metadata, map, hex, metrics, the whole page wide and narrow, the token form)
go to --screenshots DIR, each printed as `screenshot: PATH`.

Everything started here (Chromium, the static servers) is stopped before it exits. Exit
status: 0 all checks hold, 1 some failed, 2 bad arguments or Playwright/Chromium missing.
"""

import argparse
import http.server
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

MIB = 1024 * 1024
WAIT_MS = 20000


# ------------------------------------------------------------------------------------------
# Arguments


def parse_offset(text):
    text = text.strip()
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def expect_data(text):
    try:
        offset, data = text.split(":", 1)
        value = (parse_offset(offset), bytes.fromhex(data))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OFFSET:HEXBYTES, e.g. 4096:68656c6c6f")
    if not value[1] or len(value[1]) > 32768:
        raise argparse.ArgumentTypeError(f"{text!r}: between 1 and 32768 bytes")
    return value


def hole_at(text):
    try:
        if ":" in text:
            offset, length = text.split(":", 1)
            value = (parse_offset(offset), parse_offset(length))
        else:
            value = (parse_offset(text), 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OFFSET or OFFSET:LENGTH")
    if value[1] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: LENGTH must be at least 1")
    return value


def arguments():
    parser = argparse.ArgumentParser(description="Check nbd-gateway's disk browser page in headless Chromium.")
    parser.add_argument("--url", required=True, help="the page: http://127.0.0.1:PORT/ (or .../PREFIX/ under --base-path)")
    parser.add_argument("--export", required=True, help="export to check (holds the --expect-data bytes)")
    parser.add_argument("--token", default="", help="token for the gateway's --auth-file (empty: none)")
    parser.add_argument("--expect-data", type=expect_data, action="append", default=[], metavar="OFFSET:HEXBYTES",
                        help="bytes written at OFFSET (decimal or 0x hex); repeatable")
    parser.add_argument("--hole-at", type=hole_at, action="append", default=[], metavar="OFFSET[:LENGTH]",
                        help="a range that must be a hole; repeatable")
    parser.add_argument("--screenshots", metavar="DIR", help="directory for the screenshots (created)")
    parser.add_argument("--allowed-origin-port", type=int, metavar="PORT",
                        help="the gateway runs with --cors-origin http://127.0.0.1:PORT and PORT is free: check CORS")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"), help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=240, help="seconds for the whole run (default 240)")
    args = parser.parse_args()
    if not args.url.endswith("/"):
        args.url += "/"
    return args


# ------------------------------------------------------------------------------------------
# Results


class Results:
    def __init__(self):
        self.passed = []
        self.failed = []

    def ok(self, name, detail=""):
        self.passed.append(name)
        print(f"ok: {name}" + (f": {detail}" if detail else ""), flush=True)

    def fail(self, name, why):
        self.failed.append(name)
        why = " ".join(str(why).split())
        print(f"FAILED: {name}: {why}", flush=True)

    def run(self, name, function, *args):
        """Runs one check; an exception is its failure. The function returns a detail or None."""
        try:
            detail = function(*args)
        except CheckFailed as failure:
            self.fail(name, failure)
            return False
        except Exception as error:  # a Playwright timeout or anything unexpected
            self.fail(name, f"{type(error).__name__}: {error}")
            return False
        self.ok(name, detail or "")
        return True


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


class Timeout(BaseException):
    pass


class Terminated(BaseException):
    pass


# ------------------------------------------------------------------------------------------
# The API itself, through urllib


class API:
    def __init__(self, base, token):
        self.base = base
        self.token = token

    def url(self, path):
        return urllib.parse.urljoin(self.base, path)

    def request(self, path, headers=None):
        request = urllib.request.Request(self.url(path), headers=dict(headers or {}))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path):
        status, _, body = self.request(path)
        if status != 200:
            raise CheckFailed(f"GET {path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def export_path(self, name, suffix=""):
        return "exports/" + urllib.parse.quote(name, safe="") + (f"/{suffix}" if suffix else "")

    def extents(self, name, start, end):
        """Merged [start, end, kind] for [start, end), continuing where each answer stops."""
        out = []
        position = start
        for _ in range(10000):
            if position >= end:
                break
            answer = self.json(f"{self.export_path(name, 'extents')}?offset={position}&length={end - position}")
            covered = answer["offset"] + answer["length"]
            expect(covered > position, f"extents at {position} described nothing")
            for extent in answer["extents"]:
                s = max(extent["offset"], position)
                e = min(extent["offset"] + extent["length"], end, covered)
                if e <= s:
                    continue
                kind = "hole" if extent["hole"] else "zero" if extent["zero"] else "data"
                if out and out[-1][2] == kind and out[-1][1] == s:
                    out[-1][1] = e
                else:
                    out.append([s, e, kind])
            position = min(covered, end)
        return out


# ------------------------------------------------------------------------------------------
# Static servers for the CORS check (other origins)


CORS_PAGE = b"<!doctype html><html lang=en><meta charset=utf-8><title>other origin</title><p>another origin</p>"


class StaticHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(CORS_PAGE)))
        self.end_headers()
        self.wfile.write(CORS_PAGE)

    def log_message(self, *args):
        pass


def start_static_server(port):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), StaticHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


# ------------------------------------------------------------------------------------------
# Page helpers


def wait_map(page, start, end, name):
    """Waits until the map shows [start, end) of export `name`, fully loaded; returns its state."""
    page.wait_for_function(
        """([start, end, name]) => {
            const c = document.getElementById('allocation-map');
            return c.dataset.start === String(start) && c.dataset.end === String(end) && c.dataset.export === name
                && ['done', 'partial', 'error', 'unsupported'].includes(c.dataset.state);
        }""",
        arg=[start, end, name], timeout=WAIT_MS)
    return page.evaluate("""() => {
        const c = document.getElementById('allocation-map'), t = document.getElementById('allocation-totals');
        return {state: c.dataset.state, segments: JSON.parse(c.dataset.segments || '[]'),
                totals: {data: t.dataset.data, zero: t.dataset.zero, hole: t.dataset.hole, unknown: t.dataset.unknown},
                totalsText: t.innerText, label: c.getAttribute('aria-label')};
    }""")


def show_range(page, start, end, name):
    page.fill("#map-start", str(start))
    page.fill("#map-end", str(end))
    page.click("#map-show")
    return wait_map(page, start, end, name)


def current_view(page):
    return page.evaluate("""() => { const c = document.getElementById('allocation-map');
        return [Number(c.dataset.start), Number(c.dataset.end), c.dataset.state]; }""")


def wait_view_change(page, before):
    page.wait_for_function(
        """([s, e]) => { const c = document.getElementById('allocation-map');
            return (c.dataset.start !== String(s) || c.dataset.end !== String(e))
                && ['done', 'partial', 'error'].includes(c.dataset.state); }""",
        arg=before[:2], timeout=WAIT_MS)
    return current_view(page)


def pixel_kind(page, offset):
    """The colour drawn at `offset` near the bottom of the bar, compared with the palette."""
    return page.evaluate("""(offset) => {
        const c = document.getElementById('allocation-map');
        const start = Number(c.dataset.start), end = Number(c.dataset.end);
        const x = Math.min(c.width - 1, Math.floor((offset + 0.5 - start) / (end - start) * c.width));
        const y = Number(c.dataset.barTop) + Number(c.dataset.barHeight) - 3;
        const [r, g, b] = c.getContext('2d').getImageData(x, y, 1, 1).data;
        const probe = document.createElement('canvas').getContext('2d');
        const rgb = (name) => {
            probe.fillStyle = '#000'; probe.fillStyle = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
            probe.fillRect(0, 0, 1, 1); return Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3));
        };
        const near = (a) => Math.abs(a[0] - r) + Math.abs(a[1] - g) + Math.abs(a[2] - b) < 30;
        return near(rgb('--data')) ? 'data' : near(rgb('--zero')) ? 'zero' : 'other';
    }""", offset)


def parse_hex_view(text):
    """{offset: byte} from lines 'OFFSET  hh hh ... hh  hh ... hh  |ascii|'."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([0-9a-f]{8,16})  (.{49}) \|(.*)\|$", line)
        if not match:
            continue
        base = int(match.group(1), 16)
        for index, token in enumerate(match.group(2).split()):
            out[base + index] = int(token, 16)
    return out


def screenshot(page, directory, name, selector=None, full_page=False, selectors=None):
    if not directory:
        return
    path = os.path.join(directory, name)
    if selectors:
        boxes = [page.locator(s).bounding_box() for s in selectors]
        boxes = [b for b in boxes if b]
        x0 = min(b["x"] for b in boxes)
        y0 = min(b["y"] for b in boxes)
        x1 = max(b["x"] + b["width"] for b in boxes)
        y1 = max(b["y"] + b["height"] for b in boxes)
        page.screenshot(path=path, clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}, full_page=True)
    elif selector:
        page.locator(selector).screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=full_page)
    print(f"screenshot: {os.path.abspath(path)}", flush=True)


# ------------------------------------------------------------------------------------------
# The checks


class Checker:
    def __init__(self, args, browser, results):
        self.args = args
        self.browser = browser
        self.results = results
        self.api = API(args.url, args.token)
        self.shots = args.screenshots
        self.console_problems = []
        self.page_response = None
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("console", self.on_console)
        self.page.on("pageerror", lambda error: self.console_problems.append(f"uncaught: {error}"))
        self.info = None
        self.zoomed_shot = False

    def on_console(self, message):
        text = message.text
        if message.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.console_problems.append(text)

    # --- page, token, exports, metadata -------------------------------------------------

    def check_page(self):
        page = self.page
        self.page_response = page.goto(self.args.url, wait_until="domcontentloaded")
        expect(self.page_response is not None and self.page_response.status == 200,
               f"GET {self.args.url} answered {self.page_response.status if self.page_response else 'nothing'}")
        csp = self.page_response.headers.get("content-security-policy", "")
        expect("script-src 'self'" in csp and "default-src 'none'" in csp,
               f"the page's Content-Security-Policy is {csp!r}")
        # The module ran: it fills data-state on the metrics panel or asks for a token.
        page.wait_for_function("""() => document.getElementById('metrics').dataset.state !== 'loading'
            || !document.getElementById('token-panel').hidden
            || document.getElementById('export-list').children.length > 0""", timeout=WAIT_MS)
        facts = page.evaluate("""() => ({
            lang: document.documentElement.lang,
            h1: document.querySelectorAll('h1').length,
            h2: [...document.querySelectorAll('h2')].map((h) => h.textContent.trim()),
            unlabelled: [...document.querySelectorAll('input, select, textarea')]
                .filter((i) => !(i.labels && i.labels.length) && !i.getAttribute('aria-label')).map((i) => i.id),
            alert: document.getElementById('error')?.getAttribute('role'),
            describedBy: (document.getElementById('allocation-map').getAttribute('aria-describedby') || '').split(/\\s+/)
                .filter((id) => id && !document.getElementById(id)),
            inlineStyles: document.querySelectorAll('[style], style').length,
            inlineScripts: [...document.querySelectorAll('script')].filter((s) => !s.src).length,
        })""")
        expect(facts["lang"], "<html> has no lang")
        expect(facts["h1"] == 1 and len(facts["h2"]) >= 4, f"headings: {facts['h1']} h1, h2 {facts['h2']}")
        expect(not facts["unlabelled"], f"inputs without a label: {facts['unlabelled']}")
        expect(facts["alert"] == "alert", "#error is not role=alert")
        expect(not facts["describedBy"], f"aria-describedby names missing ids {facts['describedBy']}")
        expect(facts["inlineStyles"] == 0 and facts["inlineScripts"] == 0, "inline style or script in the DOM")
        return f"CSP {csp.split(';')[0]}…, lang={facts['lang']}"

    def check_token(self):
        page = self.page
        panel = page.locator("#token-panel")
        if not self.args.token:
            page.wait_for_selector("#export-list button.export-item, #error .error-box", timeout=WAIT_MS)
            expect(panel.is_hidden(), "the page asks for a token, but none is needed")
            return "no token needed, none asked"
        panel.wait_for(state="visible", timeout=WAIT_MS)
        screenshot(page, self.shots, "token.png", selector="#token-panel")
        page.get_by_label("Access token", exact=True).fill(self.args.token)
        page.get_by_role("button", name="Use token").click()
        page.wait_for_selector("#export-list button.export-item", timeout=WAIT_MS)
        expect(panel.is_hidden(), "the token form is still shown after a valid token")
        stored = page.evaluate("() => Object.keys(sessionStorage).filter((k) => k.startsWith('nbd-gateway.token')).length")
        expect(stored == 1, "the token is not in sessionStorage")
        expect(page.locator("#forget-token").is_visible(), "no visible 'Forget token' button")
        return "asked once, accepted"

    def check_token_asked_once(self):
        prompts = self.page.get_attribute("#token-panel", "data-prompts")
        if not self.args.token:
            expect(prompts is None, f"the token was asked for {prompts} times")
            return None
        expect(prompts == "1", f"the token was asked for {prompts} times")
        return "one prompt for the whole run"

    def check_exports(self):
        page = self.page
        api_names = [e["name"] for e in self.api.json("exports")["exports"]]
        page.wait_for_selector("#export-list button.export-item", timeout=WAIT_MS)
        shown = page.eval_on_selector_all("#export-list button.export-item", "bs => bs.map((b) => b.dataset.name)")
        expect(shown == api_names, f"the list shows {shown}, GET exports gives {api_names}")
        expect(self.args.export in api_names, f"export {self.args.export!r} is not listed")
        return f"{len(shown)} export(s)"

    def select_export(self):
        page = self.page
        page.locator(f'#export-list button.export-item[data-name="{css_string(self.args.export)}"]').click()
        page.wait_for_function(
            """(name) => { const b = [...document.querySelectorAll('#export-list button.export-item')]
                .find((x) => x.dataset.name === name); return b && b.getAttribute('aria-current') === 'true'
                && document.querySelector('#export-metadata dd[data-field="name"]')?.dataset.value === name; }""",
            arg=self.args.export, timeout=WAIT_MS)

    def check_metadata(self):
        page = self.page
        self.select_export()
        info = self.api.json(self.api.export_path(self.args.export))
        self.info = info
        fields = page.eval_on_selector_all("#export-metadata dd[data-field]",
                                           "ds => Object.fromEntries(ds.map((d) => [d.dataset.field, [d.dataset.value, d.innerText]]))")
        flags = page.eval_on_selector_all("#export-metadata li.flag[data-flag]",
                                          "ls => Object.fromEntries(ls.map((l) => [l.dataset.flag, l.dataset.value]))")
        problems = []

        def same(field, expected, text_must_contain=None):
            value, text = fields.get(field, [None, ""])
            if value != expected:
                problems.append(f"{field} shown as {value!r}, API says {expected!r}")
            if text_must_contain is not None and text_must_contain not in re.sub(r"[,\s]", "", text):
                problems.append(f"{field} text {text!r} lacks {text_must_contain}")

        same("size", str(info["size"]), str(info["size"]))
        same("read_only", json.dumps(info["read_only"]))
        for key in ("minimum", "preferred", "maximum"):
            value = info["block_size"][key]
            same(f"block_{key}", str(value), None if value == 4294967295 else str(value))
        same("contexts", ",".join(info.get("contexts", [])))
        same("structured_replies", json.dumps(info["structured_replies"]))
        same("consistent_across_gateways", json.dumps(info["consistent_across_gateways"]))
        access_text = fields.get("read_only", ["", ""])[1]
        if ("read-only" in access_text) != info["read_only"]:
            problems.append(f"access shown as {access_text!r}, read_only is {info['read_only']}")
        for key in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_df", "can_multi_conn", "can_cache", "rotational"):
            if flags.get(key) != json.dumps(info[key]):
                problems.append(f"flag {key} shown as {flags.get(key)!r}, API says {info[key]}")
        expect(not problems, "; ".join(problems))
        screenshot(page, self.shots, "exports-metadata.png", selectors=["#exports-panel", "#metadata-panel"])
        return f"size {info['size']}, read_only {info['read_only']}, block sizes {info['block_size']}"

    # --- map -------------------------------------------------------------------------------

    def window_around(self, offset, length):
        size = self.info["size"]
        pad = max(MIB, 4 * length)
        start = max(0, (offset - pad) // 65536 * 65536)
        end = min(size, offset + length + pad)
        return start, end

    def compare_map(self, start, end):
        name = self.args.export
        shown = show_range(self.page, start, end, name)
        expect(shown["state"] == "done", f"the map of [{start}, {end}) ended in state {shown['state']}")
        api = self.api.extents(name, start, end)
        expect(shown["segments"] == api,
               f"the map of [{start}, {end}) draws {shown['segments'][:8]}…, the API says {api[:8]}…")
        sums = {"data": 0, "zero": 0, "hole": 0, "unknown": 0}
        for s, e, kind in api:
            sums[kind] += e - s
        totals = {k: int(v) for k, v in shown["totals"].items()}
        expect(totals == sums, f"totals {totals} differ from the extents' {sums}")
        for kind in ("data", "zero", "hole"):
            expect(re.sub(r"[^0-9]", "", f"{sums[kind]:,}") in re.sub(r"[^0-9]", "", shown["totalsText"]),
                   f"the totals text does not show {sums[kind]} bytes of {kind}")
        return shown["segments"]

    @staticmethod
    def kinds_over(segments, start, end):
        return {kind for s, e, kind in segments if s < end and e > start}

    def check_map_data(self, offset, data):
        start, end = self.window_around(offset, len(data))
        segments = self.compare_map(start, end)
        kinds = self.kinds_over(segments, offset, offset + len(data))
        expect(kinds == {"data"}, f"bytes {offset}..{offset + len(data)} are drawn as {sorted(kinds)}, not data")
        expect(any(kind != "data" for _, _, kind in segments) or end - start <= 2 * len(data),
               f"[{start}, {end}) around the data is all data: no hole or zero elsewhere")
        drawn = pixel_kind(self.page, offset + len(data) // 2)
        expect(drawn == "data", f"the canvas pixel at {offset + len(data) // 2} is {drawn}, not the data colour")
        if not self.zoomed_shot:
            self.zoomed_shot = True
            self.page.click("#extent-summary")  # the extent table, opened for the picture
            screenshot(self.page, self.shots, "map-zoomed.png", selector="#map-panel")
            self.page.click("#extent-summary")
        return f"[{start}, {end}): {len(segments)} segments equal the API's, data at {offset}"

    def check_map_hole(self, offset, length):
        start, end = self.window_around(offset, length)
        segments = self.compare_map(start, end)
        kinds = self.kinds_over(segments, offset, offset + length)
        expect(kinds == {"hole"}, f"bytes {offset}..{offset + length} are drawn as {sorted(kinds)}, not hole")
        drawn = pixel_kind(self.page, offset + length // 2)
        if end - start < 4 * MIB or length * 1000 > end - start:
            expect(drawn != "data", f"the canvas pixel at {offset} has the data colour over a hole")
        return f"[{start}, {end}): hole at {offset}"

    def check_map_controls(self):
        page = self.page
        size = self.info["size"]
        expect(size >= 16, "the export is too small to zoom")
        page.click("#map-all")
        page.wait_for_function("""(size) => { const c = document.getElementById('allocation-map');
            return c.dataset.start === '0' && c.dataset.end === String(size) && ['done', 'partial'].includes(c.dataset.state); }""",
                               arg=size, timeout=WAIT_MS)
        before = current_view(page)
        screenshot(page, self.shots, "map.png", selector="#map-panel")
        page.click("#map-zoom-in")
        view = wait_view_change(page, before)
        expect(view[1] - view[0] == round(size / 2), f"zoom in shows {view[:2]}, not half of the disk")
        page.click("#map-zoom-out")
        view = wait_view_change(page, view)
        expect(view[:2] == [0, size], f"zoom out shows {view[:2]}, not the whole disk")
        # A click zooms in 4x around the clicked point.
        box = page.locator("#allocation-map").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 30)
        view = wait_view_change(page, view)
        length = view[1] - view[0]
        expect(abs(length - size / 4) <= 1 and view[0] <= size / 2 <= view[1], f"a click in the middle shows {view[:2]}")
        # A drag across the left half of the bar zooms to that half of the range.
        before = view
        page.mouse.move(box["x"] + 2, box["y"] + 30)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 4, box["y"] + 30, steps=5)
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 30, steps=5)
        page.mouse.up()
        view = wait_view_change(page, before)
        dragged = view[1] - view[0]
        expect(view[0] >= before[0] and view[1] <= before[1] and 0.4 * length <= dragged <= 0.6 * length,
               f"a drag over the left half of {before[:2]} shows {view[:2]}")
        page.click("#map-all")
        return f"zoom in/out, click → {length} bytes, drag → {view[:2]}"

    # --- hex --------------------------------------------------------------------------------

    def check_hex(self, offset, data):
        page = self.page
        start = offset // 16 * 16
        length = (offset + len(data) - start + 15) // 16 * 16
        page.fill("#hex-offset", str(start))
        page.fill("#hex-length", str(length))
        page.click("#hex-read")
        page.wait_for_function("""([o, l]) => { const v = document.getElementById('hex-view');
            return v.dataset.state === 'done' && v.dataset.offset === String(o); }""", arg=[start, length], timeout=WAIT_MS)
        text = page.inner_text("#hex-view")
        shown = parse_hex_view(text)
        wrong = [i for i, b in enumerate(data) if shown.get(offset + i) != b]
        expect(not wrong, f"#hex-view shows {bytes(shown.get(offset + i, 0) for i in wrong[:8]).hex()} at "
                          f"{offset + wrong[0] if wrong else ''} (first of {len(wrong)} wrong bytes), expected {data[wrong[0]:wrong[0] + 8].hex() if wrong else ''}")
        ascii_expected = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data[: 16 - (offset - start)])
        first_line = text.splitlines()[0] if text else ""
        expect(ascii_expected in first_line, f"the ASCII column of {first_line!r} lacks {ascii_expected!r}")
        return f"{len(data)} bytes at {offset}"

    # --- keyboard, errors, metrics -----------------------------------------------------------

    def check_keyboard(self):
        page = self.page
        page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
        page.locator("h1").click()
        reached = None
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement?.classList.contains('export-item')"):
                reached = True
                break
        expect(reached, "Tab never reaches the export list")
        outline = page.evaluate("""() => { const s = getComputedStyle(document.activeElement);
            return [s.outlineStyle, parseFloat(s.outlineWidth)]; }""")
        expect(outline[0] != "none" and outline[1] >= 2, f"the focused export has no visible outline ({outline})")
        first = page.evaluate("() => document.activeElement.dataset.name")
        # Arrow keys move along the list to the export under test; Enter selects it.
        arrows = 0
        while page.evaluate("() => document.activeElement.dataset.name") != self.args.export and arrows < 200:
            page.keyboard.press("ArrowDown")
            arrows += 1
        name = page.evaluate("() => document.activeElement.dataset.name")
        expect(name == self.args.export, f"ArrowDown from {first!r} never reaches {self.args.export!r}")
        page.keyboard.press("Enter")
        page.wait_for_function("""(name) => document.activeElement.dataset.name === name
            && document.activeElement.getAttribute('aria-current') === 'true'
            && ['done', 'partial', 'unsupported', 'empty'].includes(document.getElementById('allocation-map').dataset.state)""",
                               arg=name, timeout=WAIT_MS)
        return f"Tab reaches {first!r}, {arrows} ArrowDown to {name!r}, outline {outline[0]} {outline[1]}px, Enter selects"

    def check_error(self):
        page = self.page
        missing = "ui-check-no-such-export"
        status, _, body = self.api.request(self.api.export_path(missing))
        expect(status == 404, f"GET exports/{missing} answered {status}")
        error = json.loads(body)["error"]
        page.fill("#open-name", missing)
        page.click("#open-submit")
        page.wait_for_selector("#error .error-box", timeout=WAIT_MS)
        text = page.inner_text("#error")
        expect(error["message"] in text and error["code"] in text and "404" in text,
               f"#error shows {text!r}, the API's error is {error}")
        screenshot(page, self.shots, "error.png", selector="#error")
        # Back to the export under test.
        self.select_export()
        return f"{error['code']}: {error['message']}"

    def check_metrics(self):
        page = self.page
        status, _, _ = self.api.request("metrics")
        page.wait_for_function("() => ['ok', 'denied', 'error'].includes(document.getElementById('metrics').dataset.state)",
                               timeout=WAIT_MS)
        state = page.get_attribute("#metrics", "data-state")
        text = page.inner_text("#metrics")
        screenshot(page, self.shots, "metrics.png", selector="#metrics-panel")
        if status == 200:
            expect(state == "ok", f"GET metrics answers 200 but the panel is {state!r}: {text[:200]!r}")
            requests = int(page.get_attribute("#metrics", "data-requests") or "0")
            expect(requests >= 1, "the panel counts no request")
            for label in ("Requests", "Bytes out", "Bytes in", "NBD connections", "NBD errors"):
                expect(label in text, f"the panel lacks {label!r}")
            return f"{requests} requests shown"
        if status == 403:
            expect(state == "denied" and "not available" in text, f"GET metrics answers 403 but the panel is {state!r}: {text[:200]!r}")
            return "403 shown plainly"
        raise CheckFailed(f"GET metrics answered {status}")

    def check_screens(self):
        page = self.page
        screenshot(page, self.shots, "page.png", full_page=True)
        # The same tab (the token is kept per tab), made narrow, then wide again.
        try:
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(300)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            expect(overflow <= 1, f"at 390 px wide the page scrolls sideways by {overflow}px")
            canvas = page.evaluate("() => [document.getElementById('allocation-map').width, devicePixelRatio,"
                                   " document.getElementById('allocation-map').clientWidth]")
            expect(abs(canvas[0] - canvas[1] * canvas[2]) <= 2, f"the map was not redrawn for the narrow width: {canvas}")
            screenshot(page, self.shots, "narrow.png", full_page=True)
        finally:
            page.set_viewport_size({"width": 1280, "height": 800})
        return "no sideways scrolling at 390 px"

    def check_console(self):
        expect(not self.console_problems, " | ".join(self.console_problems[:5]))
        return None

    # --- CORS ---------------------------------------------------------------------------------

    def check_cors(self):
        port = self.args.allowed_origin_port
        gateway = self.api.url(self.api.export_path(self.args.export, "data"))
        status, _, expected = self.api.request(self.api.export_path(self.args.export, "data"), {"Range": "bytes=0-3"})
        expect(status == 206, f"GET data with Range: bytes=0-3 answered {status} to urllib")
        servers = []
        try:
            try:
                servers.append(start_static_server(port))
            except OSError as error:
                raise CheckFailed(f"could not listen on 127.0.0.1:{port} for the allowed origin: {error}")
            servers.append(start_static_server(0))
            other_port = servers[1].server_address[1]
            context = self.browser.new_context()
            try:
                page = context.new_page()
                script = """async ([url, token]) => {
                    const headers = {Range: 'bytes=0-3'};
                    if (token) headers.Authorization = 'Bearer ' + token;
                    try {
                        const r = await fetch(url, {headers});
                        const body = Array.from(new Uint8Array(await r.arrayBuffer()));
                        return {fetched: true, status: r.status, body, contentRange: r.headers.get('Content-Range')};
                    } catch (e) { return {fetched: false, error: e.name + ': ' + e.message}; }
                }"""
                page.goto(f"http://127.0.0.1:{port}/cors.html")
                allowed = page.evaluate(script, [gateway, self.args.token])
                page.goto(f"http://127.0.0.1:{other_port}/cors.html")
                refused = page.evaluate(script, [gateway, self.args.token])
            finally:
                context.close()
        finally:
            for server in servers:
                server.shutdown()
                server.server_close()
        size = self.info["size"] if self.info else None
        expect(allowed.get("fetched"), f"from the allowed origin http://127.0.0.1:{port} the fetch failed: {allowed.get('error')}")
        expect(allowed["status"] == 206, f"from the allowed origin: status {allowed['status']}, not 206")
        expect(bytes(allowed["body"]) == expected, f"from the allowed origin: bytes {bytes(allowed['body']).hex()}, expected {expected.hex()}")
        expect(allowed["contentRange"] == (f"bytes 0-3/{size}" if size is not None else allowed["contentRange"]) and allowed["contentRange"],
               f"from the allowed origin: Content-Range reads {allowed['contentRange']!r}, expected 'bytes 0-3/{size}'")
        expect(not refused.get("fetched") and refused.get("error", "").startswith("TypeError"),
               f"from the other origin http://127.0.0.1:{other_port} the fetch was not refused: {refused}")
        return f"allowed origin :{port} reads 206 {allowed['contentRange']}; origin :{other_port} refused ({refused['error']})"


def descendants():
    """PIDs of this process's descendants (the Playwright driver and Chromium), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [os.getpid()]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def reap_descendants(grace=10.0):
    """Waits for what this run started to exit; kills (by PID) whatever is still there after `grace`."""
    if not os.path.isdir("/proc"):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        left = descendants()
        if not left:
            return
        for pid in left:  # collect our own exited children
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.2)
    for pid in descendants():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def css_string(value):
    return value.replace("\\", "\\\\").replace('"', '\\"')


# ------------------------------------------------------------------------------------------


def main():
    args = arguments()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("FAILED: setup: the Python module playwright is missing (PyPI playwright; scripts/install-deps)", flush=True)
        return 2
    if not os.access(args.chromium, os.X_OK):
        print(f"FAILED: setup: no Chromium at {args.chromium} (Debian chromium; scripts/install-deps)", flush=True)
        return 2
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)

    def on_alarm(*_):
        raise Timeout()

    def on_term(*_):
        raise Terminated()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(max(1, int(args.timeout)))

    results = Results()
    launch_args = ["--no-sandbox"] if os.geteuid() == 0 else []
    launch_args += ["--disable-dev-shm-usage", "--disable-gpu"]
    playwright = browser = None
    try:
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=args.chromium, args=launch_args, headless=True)
        checker = Checker(args, browser, results)
        if not results.run("page", checker.check_page):
            return finish(results)
        if not results.run("token", checker.check_token):
            return finish(results)
        results.run("exports", checker.check_exports)
        if not results.run("metadata", checker.check_metadata):
            return finish(results)
        for offset, data in args.expect_data:
            results.run(f"map data at {offset}", checker.check_map_data, offset, data)
        for offset, length in args.hole_at:
            results.run(f"map hole at {offset}", checker.check_map_hole, offset, length)
        results.run("map-controls", checker.check_map_controls)
        for offset, data in args.expect_data:
            results.run(f"hex at {offset}", checker.check_hex, offset, data)
        if args.expect_data:
            screenshot(checker.page, args.screenshots, "hex.png", selector="#hex-panel")
        results.run("keyboard", checker.check_keyboard)
        results.run("metrics", checker.check_metrics)
        results.run("error", checker.check_error)
        results.run("screens", checker.check_screens)
        results.run("token asked once", checker.check_token_asked_once)
        results.run("no CSP violation or uncaught error", checker.check_console)
        if args.allowed_origin_port:
            results.run("cors", checker.check_cors)
        else:
            print("skipped: cors (no --allowed-origin-port)", flush=True)
        return finish(results)
    except Timeout:
        results.fail("run", f"did not finish within {args.timeout:.0f} s")
        return finish(results)
    except Terminated:
        results.fail("run", "stopped by SIGTERM")
        return finish(results)
    finally:
        signal.alarm(0)
        if browser is not None:
            try:
                browser.close()
            except Exception:
                pass
        if playwright is not None:
            try:
                playwright.stop()
            except Exception:
                pass
        reap_descendants()


def finish(results):
    total = len(results.passed) + len(results.failed)
    if results.failed:
        print(f"ui_check: {len(results.failed)} of {total} checks failed: {', '.join(results.failed)}", flush=True)
        return 1
    print(f"ui_check: all {total} checks hold", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
