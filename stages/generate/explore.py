"""`python -m stages.generate explore`: one web page to look at a generator, served on 127.0.0.1.

    python -m stages.generate explore --network runs/demo                      # snapshot picker for the run
    python -m stages.generate explore --network models:/stylegan2-generator@champion \\
                                      --compare models:/stylegan2-generator@challenger
    python -m stages.generate explore --network ffhq.pkl --device cuda --port 8765 --open-browser

The page (stages/generate/explore_page/, served from here: no CDN) has seed, truncation psi and cutoff, class and
noise mode; interpolation between two seeds (a slider and a loop); a style-mixing panel; for StyleGAN3 translate
and rotate sliders; an FFT view; a snapshot picker for a run folder; the same seeds side by side for `--compare`.
Every image is a PNG rendered here, and the page shows what each took.

    GET  /                        the page; /static/<file> its script and style sheet
    GET  /api/info                networks, their snapshots and controls, the page's first settings, limits
    GET  /api/image?seed=3&...    image/png (parameters: stages.generate.explore_render); X-Render-Ms,
                                  X-Batch-Size, X-Queue-Ms say what it cost
    POST /api/image               the same parameters as a JSON object
    GET  /api/stats               the batcher's counts: batches, images, batch-size histogram, rejected
    GET  /api/health              {"ready": true}

Renders go through the serve command's `DynamicBatcher` (requests within `batch_window_ms` share a batch of at
most `batch_size` images) with the same bounds: `max_queue` images waiting, `max_connections` connections,
`max_body_bytes` per JSON body, `timeout_s` per idle connection. Bad requests are 4xx with a one-line JSON error
and never stop the server. Bound to a loopback address, it answers only requests addressed to it by a loopback
name (a web page elsewhere cannot reach it by DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import re
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from stages.common.errors import BadInput
from stages.generate.config import ExploreConfig, GenerateError
from stages.generate.explore_render import (
    QUERY_KEYS,
    ExploreRenderer,
    GeneratorCache,
    ImageRequest,
    Network,
    parse_request,
    to_image,
    with_spectrum,
)
from stages.generate.explore_sources import resolve_source
from stages.serving.batching import BatchOptions, DynamicBatcher, RequestError
from stages.serving.http import BoundedHTTPServer, SafeHandler, png_bytes, query_params

PAGE_DIR = Path(__file__).with_name("explore_page")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# Everything from this origin, nothing inline, nothing elsewhere: the page works offline and cannot be framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def page_assets(folder: Path = PAGE_DIR) -> dict[str, tuple[bytes, str]]:
    """The page's files by name, read once: requests pick from this table and never touch the file system."""
    assets = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and re.fullmatch(r"[A-Za-z0-9_-]+\.[a-z]+", f.name) and f.suffix in CONTENT_TYPES:
            assets[f.name] = (f.read_bytes(), CONTENT_TYPES[f.suffix])
    if "index.html" not in assets:
        raise GenerateError(f"explorer page missing: {folder / 'index.html'}")
    return assets


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ExploreServer(BoundedHTTPServer):
    batcher: DynamicBatcher

    def __init__(self, cfg: ExploreConfig, networks: list[Network], precision: str) -> None:
        self.cfg, self.networks = cfg, networks
        self.assets = page_assets()
        self.renderer = ExploreRenderer(networks, precision)
        options = BatchOptions(window_ms=cfg.batch_window_ms, max_queue=cfg.max_queue,
                               max_connections=cfg.max_connections, timeout_s=cfg.timeout_s)
        super().__init__((cfg.host, cfg.port), ExploreHandler, options)
        self.batcher = DynamicBatcher(self.renderer, max_batch=cfg.batch_size, window_s=cfg.batch_window_ms / 1e3,
                                      max_queue=max(cfg.max_queue, cfg.batch_size), key=lambda r: r.batch_key,
                                      timeout_s=cfg.timeout_s, expected=lambda: self.open_connections,
                                      name="explore-batcher")
        self.check_host = is_loopback(cfg.host)

    def server_close(self) -> None:
        super().server_close()
        if self.batcher is not None:
            self.batcher.close()

    def info(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "networks": [n.info() for n in self.networks],
            "defaults": {"seed": cfg.seed, "seed2": cfg.seed2, "psi": cfg.trunc, "cutoff": cfg.trunc_cutoff,
                         "class": cfg.class_idx, "noise": cfg.noise_mode, "interp_frames": cfg.interp_frames,
                         "interp_fps": cfg.interp_fps, "mix_rows": cfg.mix_rows, "mix_cols": cfg.mix_cols,
                         "mix_styles": cfg.mix_styles},
            "limits": {"max_seed": 2**32 - 1, "max_mix_seeds": cfg.max_mix_seeds, "max_batch": cfg.batch_size,
                       "batch_window_ms": cfg.batch_window_ms},
            "precision": self.renderer.precision,
        }


class ExploreHandler(SafeHandler):
    server: ExploreServer

    def setup(self) -> None:
        self.max_body_bytes = self.server.cfg.max_body_bytes
        super().setup()

    def _host_allowed(self) -> bool:
        if not self.server.check_host:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        return name in LOOPBACK_NAMES

    def _image(self, values: dict[str, Any]) -> None:
        req: ImageRequest = parse_request(values, self.server.networks)
        start = time.perf_counter()
        out, info = self.server.batcher.submit(req)
        cfg = self.server.cfg
        img = with_spectrum(out, cfg.fft_range_db, cfg.fft_beta) if req.view == "fft" else to_image(out)
        body = png_bytes(img, cfg.png_compress_level)
        total_ms = (time.perf_counter() - start) * 1e3
        self._send(200, body, "image/png", {
            "Cache-Control": "no-store", "X-Render-Ms": f"{info.run_ms:.2f}", "X-Batch-Size": str(info.batch),
            "X-Queue-Ms": f"{info.queue_ms:.2f}", "X-Server-Ms": f"{total_ms:.2f}",
            "Access-Control-Expose-Headers": "X-Render-Ms, X-Batch-Size, X-Queue-Ms, X-Server-Ms"})

    def _route(self) -> None:
        if not self._host_allowed():
            raise RequestError("this server answers only requests for 127.0.0.1 / localhost", 403)
        url = urlparse(self.path)
        path, method = url.path, self.command
        if url.query and path != "/api/image":
            query_params(url.query, ())  # nothing else takes parameters; garbage is refused all the same
        if method == "GET" and path in ("/", "/index.html"):
            body, ctype = self.server.assets["index.html"]
            self._send(200, body, ctype, {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                                          "Cache-Control": "no-cache"})
        elif method == "GET" and path.startswith("/static/"):
            try:
                name = unquote(path[len("/static/"):], errors="strict")
            except UnicodeDecodeError:
                raise RequestError("malformed path (not UTF-8)") from None
            if name not in self.server.assets:  # a table lookup: no path is ever joined, so no ../ escapes
                raise RequestError(f"no file {name[:60]!r}", 404)
            body, ctype = self.server.assets[name]
            self._send(200, body, ctype, {"Cache-Control": "no-cache"})
        elif method == "GET" and path == "/api/info":
            self._json(200, self.server.info())
        elif method == "GET" and path == "/api/health":
            self._json(200, {"ready": True})
        elif method == "GET" and path == "/api/stats":
            self._json(200, {**self.server.batcher.snapshot_stats(),
                             "rejected_connections": self.server.rejected_connections})
        elif method == "GET" and path == "/api/image":
            self._image(query_params(url.query, QUERY_KEYS))
        elif method == "POST" and path == "/api/image":
            body = self._body()
            if not isinstance(body, dict) or len(body) > len(QUERY_KEYS):
                raise RequestError(f"expected a JSON object with keys among {', '.join(QUERY_KEYS)}")
            self._image(body)
        elif method in ("GET", "POST"):
            raise RequestError(f"no {method} {path[:80]}", 404)
        else:
            self._method_not_allowed()

def load_networks(cfg: ExploreConfig, device: torch.device) -> list[Network]:
    cache = GeneratorCache(cfg.cache_networks, device)
    specs = [cfg.require_network()] + ([cfg.compare] if cfg.compare else [])
    networks = []
    for i, spec in enumerate(specs):
        source = resolve_source(spec)
        try:
            networks.append(Network(i, source, cache))
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, BadInput):
                raise
            raise GenerateError(f"--{'network' if i == 0 else 'compare'} {spec}: cannot load "
                                f"({type(exc).__name__}: {str(exc)[:160]})") from exc
    return networks


def make_explore_server(cfg: ExploreConfig) -> ExploreServer:
    """Load the networks and bind the port (port 0: any free one, see `server.server_address`)."""
    from stages.common.device import resolve_device

    device = resolve_device(cfg.device)
    networks = load_networks(cfg, device)
    try:
        return ExploreServer(cfg, networks, cfg.precision)
    except OSError as exc:
        raise BadInput(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None


def run_explore(cfg: ExploreConfig) -> None:
    server = make_explore_server(cfg)
    host, port = server.server_address[:2]
    url = f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}/"
    names = " | ".join(f"{n.source.spec} ({n.meta['family']}, {n.meta['resolution']} px)" for n in server.networks)
    print(f"explorer on {url} for {names}; Ctrl-C stops", flush=True)
    for n in server.networks:
        for note in ([n.source.note] if n.source.note else []) + n.meta["notes"]:
            print(f"note: {n.source.spec}: {note}", file=sys.stderr)
    if cfg.open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
