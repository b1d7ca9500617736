"""``traitflow view``: a local web app over a project's stored artifacts (any store), no model needed
except by Live chat, which streams through the project's running ``traitflow serve``.

Routes (:mod:`traitflow.view.urls`): ``/<experiment>/`` and ``/<experiment>/<page>?…`` are pages;
``/api/<experiment>/<page>?…`` the same data as JSON; ``POST /api/<experiment>/chat`` a Live chat
turn (NDJSON, the model server's ``/generate`` events, passed on as they come); ``/static/…`` the
script, styles and Vega bundle. It listens on 127.0.0.1 only: reach it from elsewhere through an
SSH tunnel. The model server's token stays in this process; the browser never sees it.

Specs are read again when a file under ``specs/`` or ``datasets/traits/`` changes; artifacts are
read on every request, so a page shows what is materialized now.
"""

import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from traitflow.errors import SpecErrors, TraitflowError
from traitflow.store import ArtifactStore
from traitflow.view import data
from traitflow.view.html import STATIC_FILES, page_html, static_text
from traitflow.view.urls import DEFAULT_PORT, PAGES

MAX_CHAT_BODY = 1 << 20
MAX_CHAT_TOKENS = 1024  # per reply


class ParsedJson:
    """Parsed JSON artifacts of local stores, kept between requests while the file is unchanged
    (same size and modification time). A projections or variant_diff file of a large experiment is
    tens of MB, and parsing it is most of a page's time; every page after the first reads it from
    here. Pages never modify what they read, so sharing the parsed objects is safe."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[int, int], int, Any]] = {}

    def read(self, store: Any, path: Path) -> Any:
        if type(store) is not ArtifactStore:  # a bucket's mirror is checked against the bucket by its store on each read
            return json.loads(store.read_bytes(path))
        try:
            stat = path.stat()
        except FileNotFoundError:
            return json.loads(store.read_bytes(path))  # the store's own error
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry[0] == stamp:
                return entry[2]
        try:
            value = json.loads(store.read_bytes(path))
        except ValueError as exc:  # a damaged file: say which, not "internal error"
            raise TraitflowError(f"{path}: not valid JSON ({exc}); re-materialize its asset") from None
        with self._lock:
            self._entries[path] = (stamp, stat.st_size, value)
            while sum(e[1] for e in self._entries.values()) > self.max_bytes and len(self._entries) > 1:
                del self._entries[next(iter(self._entries))]  # the oldest first
        return value


class Viewer:
    """The project as the viewer sees it: specs (reloaded when they change) and the stores."""

    def __init__(self, root: Path, storage_uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.storage_uri = storage_uri
        self._lock = threading.Lock()
        self._project: Any = None
        self._stamp: tuple | None = None
        self._checked = 0.0
        self.parsed = ParsedJson()

    def _spec_stamp(self) -> tuple:
        """Every spec and trait file's path and mtime: what decides the project's shape."""
        stamp = []
        for top in (self.root / "specs", self.root / "datasets" / "traits"):
            for folder, _, files in os.walk(top):
                for name in files:
                    try:
                        stamp.append((folder, name, os.stat(os.path.join(folder, name)).st_mtime_ns))
                    except OSError:
                        pass
        return tuple(sorted(stamp))

    def project(self) -> Any:
        from traitflow.specs.loader import load_project

        with self._lock:
            if self._project is None or time.monotonic() - self._checked > 2.0:
                self._checked = time.monotonic()
                stamp = self._spec_stamp()
                if stamp != self._stamp:
                    self._project, self._stamp = load_project(self.root, strict=False), stamp
            return self._project

    def context(self, experiment: str) -> Any:
        from traitflow.stages.context import ReadContext

        ctx = ReadContext.create(self.project(), experiment, storage_uri=self.storage_uri)
        store, parsed = ctx.store, self.parsed
        store.read_json = lambda path: parsed.read(store, path)  # this context's reads go through the cache
        return ctx

    def page(self, experiment: str, page: str, params: dict[str, str]) -> dict[str, Any]:
        """One page's data (:mod:`traitflow.view.data`)."""
        if page not in PAGES:
            raise TraitflowError(f"no page {page!r}; pages: {', '.join(PAGES)}")
        ctx = self.context(experiment)
        if page == "experiment":
            return data.experiment_page(ctx)
        if page == "extraction":
            return data.extraction_page(ctx, _param(params, "trait"))
        if page == "steering":
            return data.steering_page(ctx, _param(params, "trait"), _param(params, "variant"))
        if page == "dynamics":
            return data.dynamics_page(ctx, _param(params, "prompt_set"), _param(params, "variant"), params.get("prompt"))
        if page == "comparison":
            return data.comparison_page(ctx, _param(params, "a"), _param(params, "b"), _param(params, "prompt_set"),
                                        params.get("trait"))
        if page == "benchmarks":
            return data.benchmarks_page(ctx, params.get("benchmark"), params.get("variant"))
        server = self.model_server()
        return data.chat_page(ctx, server.variants if server else None)

    def model_server(self) -> Any:
        from traitflow.server.client import find_server

        return find_server(self.root, honour_no_server=False)

    def chat(self, experiment: str, request: dict[str, Any], emit: Callable[[dict], None]) -> None:
        """One Live chat turn through the model server: `request` is ``{variant, messages, system,
        steer: ["TRAIT:COEF"], max_new_tokens}``; every event of its ``/generate`` is passed on."""
        from traitflow.server.client import ServerUnavailable

        self.context(experiment)  # an unknown experiment is a one-line error before anything runs
        steer = request.get("steer") or []
        if not isinstance(steer, list) or not all(isinstance(s, str) for s in steer):
            raise TraitflowError("steer must be a list of 'TRAIT:COEFFICIENT'")
        max_new_tokens = request.get("max_new_tokens", 64)
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_CHAT_TOKENS:
            raise TraitflowError(f"max_new_tokens must be a whole number from 1 to {MAX_CHAT_TOKENS}")
        server = self.model_server()
        if server is None:
            raise TraitflowError("no model server runs for this project: start one with `traitflow serve --variants …`")
        body = {"experiment": experiment, "variant": str(request.get("variant")), "messages": request.get("messages"),
                "system": request.get("system") or None, "steer": steer, "traits": "*",
                "max_new_tokens": max_new_tokens, "storage": self.storage_uri}
        try:
            for event in server.stream("/generate", body):
                emit(event)
        except ServerUnavailable as exc:
            raise TraitflowError(str(exc)) from None


def _param(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise TraitflowError(f"this page needs ?{name}=")
    return value


def _handler(viewer: Viewer, log: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    from traitflow.charts import vega_bundle

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, api: bool) -> None:
            if api:
                return self._send(status, json.dumps({"error": message}).encode(), "application/json")
            page = {"page": "error", "message": message}
            html = ("<!DOCTYPE html><meta charset=utf-8><title>traitflow</title><link rel=stylesheet href=/static/app.css>"
                    "<main><h1>Not here</h1><p class=note></p></main><script type=application/json id=tf-error>"
                    + json.dumps(page).replace("<", "\\u003c")
                    + "</script><script>document.querySelector('.note').textContent="
                      "JSON.parse(document.getElementById('tf-error').textContent).message</script>")
            self._send(status, html.encode(), "text/html; charset=utf-8")

        def _local_host(self) -> bool:
            """Only names of this machine: a page on another site that rebinds its DNS name to
            127.0.0.1 sends its own Host, and is refused (it must not read the artifacts)."""
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
            return host in ("127.0.0.1", "localhost", "::1")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            if not self._local_host():
                return self._error(403, "the viewer answers only to 127.0.0.1 or localhost (tunnel to it)", api=True)
            parts = [unquote(p) for p in url.path.split("/") if p]
            api = bool(parts) and parts[0] == "api"
            try:
                if parts == ["favicon.ico"]:
                    return self._send(204, b"", "image/x-icon", cache=True)
                if parts[:1] == ["static"] and len(parts) == 2:
                    if parts[1] == "vega.js":
                        return self._send(200, vega_bundle().encode(), "text/javascript; charset=utf-8", cache=True)
                    if parts[1] in STATIC_FILES:
                        return self._send(200, static_text(parts[1]).encode(), STATIC_FILES[parts[1]])
                    return self._error(404, f"no static file {parts[1]!r}", api=False)
                if api:
                    parts = parts[1:]
                if not parts:
                    experiments = sorted(viewer.project().experiments)
                    if len(experiments) == 1 and not api:
                        self.send_response(302)
                        self.send_header("Location", f"/{experiments[0]}/")
                        self.end_headers()
                        return None
                    listing = {"experiments": experiments}
                    if api:
                        return self._send(200, json.dumps(listing).encode(), "application/json")
                    links = "".join(f'<li><a href="/{e}/">{e}</a></li>' for e in experiments)
                    return self._send(200, f"<!DOCTYPE html><meta charset=utf-8><title>traitflow</title>"
                                           f"<link rel=stylesheet href=/static/app.css><main><h1>Experiments</h1><ul>{links}</ul></main>"
                                      .encode(), "text/html; charset=utf-8")
                if len(parts) > 2:
                    return self._error(404, f"no page {url.path}", api)
                experiment, page = parts[0], (parts[1] if len(parts) == 2 else "experiment")
                params = {k: v[-1] for k, v in parse_qs(url.query).items()}
                started = time.perf_counter()
                body = viewer.page(experiment, page, params)
                if api:
                    return self._send(200, json.dumps(body, allow_nan=False).encode(), "application/json")
                self._send(200, page_html(body, f"{page} · {experiment}").encode(), "text/html; charset=utf-8")
                log(f"GET {self.path} {1000 * (time.perf_counter() - started):.0f} ms")
            except (TraitflowError, SpecErrors) as exc:
                self._error(404, str(exc) if isinstance(exc, TraitflowError) else "; ".join(e.format() for e in exc.errors), api)
            except Exception:  # noqa: BLE001 - a bug: say so, keep serving
                log(traceback.format_exc())
                self._error(500, "internal error (the viewer's log has the traceback)", api)

        def do_POST(self) -> None:  # noqa: N802
            parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
            if len(parts) != 3 or parts[0] != "api" or parts[2] != "chat":
                return self._error(404, f"no endpoint {self.path}", api=True)
            # A chat turn runs the model: only from the viewer's own pages. Another site's page can
            # POST here without asking first only with a form's content types, and its Origin differs.
            origin = self.headers.get("Origin")
            own = {f"http://{name}:{self.server.server_address[1]}" for name in ("127.0.0.1", "localhost", "[::1]")}
            if not self._local_host() or (origin is not None and origin not in own):
                return self._error(403, "chat turns come only from the viewer's own pages", api=True)
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                return self._error(415, "the body must be JSON (Content-Type: application/json)", api=True)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_CHAT_BODY:
                return self._error(400, f"Content-Length must be 0 … {MAX_CHAT_BODY}", api=True)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                request = None
            if not isinstance(request, dict):
                return self._error(400, "the body must be a JSON object", api=True)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()

            def emit(event: dict) -> None:
                self.wfile.write(json.dumps(event).encode() + b"\n")
                self.wfile.flush()

            try:
                viewer.chat(parts[1], request, emit)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page was closed mid-reply
            except (TraitflowError, SpecErrors, ValueError, TypeError) as exc:
                message = "; ".join(e.format() for e in exc.errors) if isinstance(exc, SpecErrors) else str(exc)
                emit({"error": message})
            except Exception:  # noqa: BLE001
                log(traceback.format_exc())
                emit({"error": "internal error (the viewer's log has the traceback)"})

    return Handler


def make_server(root: Path, port: int = DEFAULT_PORT, storage_uri: str | None = None,
                log: Callable[[str], None] = print) -> ThreadingHTTPServer:
    """The viewer's HTTP server on 127.0.0.1 (`port` 0: any free port), not yet serving."""
    viewer = Viewer(root, storage_uri)
    viewer.project()  # bad specs fail now, in one line, not on the first page
    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(viewer, log))
    except OSError as exc:
        raise TraitflowError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another with --port") from None
    httpd.daemon_threads = True
    return httpd


def view(root: Path, port: int = DEFAULT_PORT, storage_uri: str | None = None, log: Callable[[str], None] = print) -> None:
    """``traitflow view``: serve until Ctrl-C."""
    httpd = make_server(root, port, storage_uri, log)
    host, bound = httpd.server_address[:2]
    log(f"traitflow view: http://{host}:{bound}/  (artifacts of {Path(root).resolve()}; Ctrl-C stops)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
