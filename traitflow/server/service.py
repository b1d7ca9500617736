"""The model server: warm variants, one model task at a time, HTTP on 127.0.0.1 (see the package docstring)."""

import hmac
import json
import os
import secrets
import select
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from traitflow.errors import SpecErrors, TraitflowError, TransientError
from traitflow.server.wire import DISCOVERY_FILE, output_to_json, spec_digest
from traitflow.store.atomic import atomic_write_text

MAX_BODY = 64 * 1024 * 1024  # a request is specs' names and token ids, never this large


class Busy(Exception):
    def __init__(self, running: str, queued: int, max_queue: int):
        super().__init__(f"busy: running {running}, {queued} waiting (the queue holds {max_queue})")
        self.running, self.queued = running, queued


class NotServed(Exception):
    """The request needs a model this server does not hold (or holds at another version)."""


class ModelQueue:
    """One model task at a time; up to `max_queue` wait, one more is refused at once (Busy)."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.running: str | None = None
        self.queued = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, label: str, on_wait: Callable[[str, int], None] | None = None, refuse: bool = True) -> Iterator[None]:
        """Hold the model for the block. `on_wait(running, queued)` is called once if it must wait;
        with `refuse`, a full queue raises Busy instead."""
        with self._cond:
            if self.running is not None and refuse and self.queued >= self.max_queue:
                raise Busy(self.running, self.queued, self.max_queue)
            self.queued += 1
            try:
                if self.running is not None and on_wait is not None:
                    on_wait(self.running, self.queued)
                while self.running is not None:
                    self._cond.wait()
            finally:
                self.queued -= 1
            self.running = label
        try:
            yield
        finally:
            with self._cond:
                self.running = None
                self._cond.notify_all()


@dataclass
class ModelServer:
    """The state behind the HTTP handler: the project root, the warm variants, the queue."""

    root: Path
    variants: dict[str, str]  # the names asked for -> content version of what is loaded
    queue: ModelQueue
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    @classmethod
    def start(cls, root: Path, names: list[str], max_queue: int = 8, log: Callable[[str], None] = print) -> "ModelServer":
        """Load the named variants (model spec names, or variant names of the project's experiments)."""
        from traitflow.model.fingerprint import model_version
        from traitflow.model.loading import MODEL_CACHE

        root = Path(root).resolve()
        project = _project(root)
        specs = {name: _resolve_variant(project, name) for name in names}  # every name checked before any load
        variants = {}
        for name, spec in specs.items():
            MODEL_CACHE.get(spec, root)
            variants[name] = model_version(spec, root)
            log(f"loaded {name}: {spec.model}{' + ' + spec.lora if spec.lora else ''} (version {variants[name]})")
        return cls(root, variants, ModelQueue(max_queue))

    # ------------------------------------------------------------------ requests
    def health(self) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "root": str(self.root), "variants": self.variants,
                "running": self.queue.running, "queued": self.queue.queued, "max_queue": self.queue.max_queue}

    def _loader(self, exp: Any, hold_model: Callable[[], None]) -> Callable[[str], Any]:
        """`load_model` for a request: warm variants only, at the version the files have now.
        `hold_model` is called first: whatever loads a model takes its turn in the queue."""
        from traitflow.model.fingerprint import model_version
        from traitflow.model.loading import MODEL_CACHE

        served, checked = set(self.variants.values()), {}

        def load(variant: str) -> Any:
            spec = exp.variants.get(variant)
            if spec is None:
                raise TraitflowError(f"unknown variant {variant!r}; experiment {exp.name} has {', '.join(exp.variants)}")
            if variant not in checked:
                checked[variant] = model_version(spec, self.root)
            if checked[variant] not in served:
                raise NotServed(f"variant {variant} ({spec.model}, version {checked[variant]}) is not loaded here")
            hold_model()
            return MODEL_CACHE.get(spec, self.root)

        return load

    def run_stage(self, request: dict[str, Any], emit: Callable[[dict], None], hold_model: Callable[[], None]) -> None:
        from traitflow.stages.context import StageContext

        name = str(request.get("stage", ""))
        stage = _stage_function(name)
        if stage is None:
            raise NotServed(f"no stage named {name!r}")
        project = _project(self.root, request.get("experiment"))
        exp = project.require(str(request.get("experiment")))
        if spec_digest(exp) != request.get("spec_digest"):
            raise NotServed(f"experiment {exp.name}: the specs on disk differ from the client's (edited since it loaded them?)")
        ctx = StageContext.create(project, exp.name, load_model=self._loader(exp, hold_model),
                                  storage_uri=request.get("storage") or None, log=lambda line: emit({"log": line}))
        ctx.blocked_traits = dict(request.get("blocked_traits") or {})
        partition = request.get("partition") or {}
        if not isinstance(partition, dict):
            raise TraitflowError("partition must be an object of dimension names to keys")
        emit({"output": output_to_json(stage(ctx, **{str(k): str(v) for k, v in partition.items()}))})

    def generate(self, request: dict[str, Any], emit: Callable[[dict], None], hold_model: Callable[[], None]) -> None:
        """Generate (steered when asked) and project each token, as `traitflow monitor` does."""
        import fnmatch

        import torch

        from traitflow.model.chat import conversation_ids, prompt_ids
        from traitflow.monitor.live import _monitors, _steers, generate_live
        from traitflow.stages.context import ReadContext

        experiment = str(request.get("experiment"))
        project = _project(self.root, experiment)
        ctx = ReadContext.create(project, experiment, storage_uri=request.get("storage") or None)
        traits = [t for t in ctx.experiment.traits if fnmatch.fnmatchcase(t, str(request.get("traits", "*")))]
        if not traits:
            raise TraitflowError(f"traits {request.get('traits')!r} match none of {experiment}'s traits")
        monitors = _monitors(ctx, traits)
        config, notes = _steers(ctx, [str(s) for s in request.get("steer", [])])
        loaded = self._loader(ctx.experiment, hold_model)(str(request.get("variant")))
        emit({"monitors": [{"trait": m.trait, "layer": m.layer, "position": m.position, "method": m.method,
                            "midpoint": m.midpoint} for m in monitors], "steering": notes})
        messages = request.get("messages")
        if messages is not None:  # a multi-turn chat (the viewer's Live chat); one user turn is `prompt`
            if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                         for m in messages):
                raise TraitflowError("messages must be a list of {role, content} objects")
            ids = conversation_ids(loaded, messages, request.get("system"))
        else:
            ids = prompt_ids(loaded, str(request.get("prompt", "")), request.get("system"))
        result = generate_live(loaded, ids, torch.stack([m.vector.float() for m in monitors]), [m.layer for m in monitors],
                               int(request.get("max_new_tokens", 64)), steer=tuple(config),
                               on_token=lambda i, piece, scores: emit({"token": piece, "scores": scores}),
                               components=[m.component for m in monitors])
        emit({"done": {"text": result.text, "prompt_ids": result.prompt_ids, "response_ids": result.response_ids}})

    def capture(self, request: dict[str, Any]) -> bytes:
        """Pooled activations (`traitflow.model.hooks.capture_pooled`) as safetensors bytes, one tensor per position."""
        from safetensors.torch import save

        from traitflow.model.hooks import capture_pooled

        experiment = str(request.get("experiment"))
        exp = _project(self.root, experiment).require(experiment)
        loaded = self._loader(exp, lambda: None)(str(request.get("variant")))  # its handler holds the turn already
        sequences = [(list(map(int, p)), list(map(int, r))) for p, r in request.get("sequences", [])]
        pooled = capture_pooled(loaded, sequences, [int(x) for x in request.get("layers", [])],
                                [str(p) for p in request.get("positions", ["response[:]"])],
                                component=str(request.get("component", "residual")),
                                batch_size=int(request.get("batch_size", 16)))
        return save({position: tensor.contiguous() for position, tensor in pooled.items()})


STAGE_MODULES = ("extraction", "steering", "inference", "comparison", "capability")  # traitflow.stages.<module>.run_*


def _stage_function(name: str) -> Callable | None:
    """`extraction.run_responses` -> the function; None for anything that is not a stage."""
    import importlib

    module, _, function = name.partition(".")
    if module not in STAGE_MODULES or not function.startswith("run_"):
        return None
    return getattr(importlib.import_module(f"traitflow.stages.{module}"), function, None)


def _project(root: Path, experiment: Any = None) -> Any:
    """The project as it is on disk now (specs may have changed since the server started)."""
    from traitflow.specs.loader import load_project

    return load_project(root, experiments=[str(experiment)] if experiment else None, strict=False)


def _resolve_variant(project: Any, name: str) -> Any:
    if name in project.models:
        return project.models[name].model_copy(update={"name": name})
    found = {}
    for exp in project.experiments.values():
        if name in exp.variants:
            spec = exp.variants[name]
            found.setdefault(json.dumps(spec.model_dump(mode="json", exclude={"name"}), sort_keys=True), (exp.name, spec))
    if not found:
        known = sorted(set(project.models) | {v for e in project.experiments.values() for v in e.variants})
        raise TraitflowError(f"--variants: {name!r} is neither a model spec nor a variant of an experiment (known: {', '.join(known)})")
    if len(found) > 1:
        where = ", ".join(f"{exp} ({spec.model})" for exp, spec in found.values())
        raise TraitflowError(f"--variants: {name!r} names different models in different experiments ({where}); "
                             "name the model spec instead")
    return next(iter(found.values()))[1]


# ---------------------------------------------------------------------- HTTP
class ClientGone(Exception):
    """The client hung up while its request waited for the model: the work is not started."""


def _plain(value: Any) -> Any:
    """JSON for what json does not know: numpy and torch scalars as numbers, anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def _handler(server: ModelServer, log: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    routes = {"/stage": server.run_stage, "/generate": server.generate}

    class Handler(BaseHTTPRequestHandler):
        answered = False  # headers sent: an error can only go into the stream now

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per task is printed below; no access log

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body, default=_plain).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.answered = True

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health":
                self._json(200, server.health())
            else:
                self._json(404, {"error": f"no such endpoint {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                self._post()
            except Exception:  # noqa: BLE001 - a bug or a malformed request: answer it and keep serving
                log(traceback.format_exc())
                if not self.answered:
                    self._json(500, {"error": "internal error (the server's log has the traceback)"})

        def _post(self) -> None:
            if self.path not in (*routes, "/capture"):
                return self._json(404, {"error": f"no such endpoint {self.path}"})
            given = self.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, f"Bearer {server.token}".encode()):
                return self._json(401, {"error": f"wrong or missing token (it is in {server.root / DISCOVERY_FILE})"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                return self._json(400, {"error": f"Content-Length must be 0 … {MAX_BODY}"})
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                request = None
            if not isinstance(request, dict):
                return self._json(400, {"error": "the body must be a JSON object"})
            label = f"{self.path[1:]} {request.get('stage', '')} {request.get('partition') or request.get('variant', '')}"
            label = " ".join(label.split())
            if self.path == "/capture":
                return self._capture(request, label)
            self._stream(routes[self.path], request, label)

        def _capture(self, request: dict, label: str) -> None:
            try:
                with server.queue.slot(label):
                    data = server.capture(request)
            except Busy as busy:
                return self._json(503, {"error": str(busy), "running": busy.running, "queued": busy.queued})
            except NotServed as exc:
                return self._json(409, {"error": str(exc), "not_served": True})
            except (TraitflowError, SpecErrors, ValueError, TypeError) as exc:
                return self._json(400, {"error": str(exc)})
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.answered = True

        def _client_gone(self) -> bool:
            """The client sent its whole request and now only reads: readable means it hung up."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _stream(self, route: Callable, request: dict, label: str) -> None:
            """NDJSON, one line per event, flushed as it happens; the last line says how it ended.
            Whatever loads a model takes its turn in the queue first (a waiting line says behind what)."""
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Connection", "close")
            self.end_headers()
            self.answered = True
            hung_up = False

            def emit(event: dict) -> None:
                nonlocal hung_up
                if hung_up:
                    return  # the task finishes anyway: its writes are atomic and the next run may reuse them
                try:
                    self.wfile.write(json.dumps(event, default=_plain).encode() + b"\n")
                    self.wfile.flush()
                except OSError:
                    hung_up = True

            turn, holding = ExitStack(), []

            def hold_model() -> None:
                if holding:
                    return
                waiting = lambda running, queued: emit({"log": f"waiting for the model: running {running}, {queued} waiting"})  # noqa: E731
                turn.enter_context(server.queue.slot(label, on_wait=waiting))
                holding.append(True)
                if self._client_gone():
                    raise ClientGone

            log(f"{label} …")
            with turn:
                try:
                    route(request, emit, hold_model)
                    log(f"{label} done")
                except Busy as busy:
                    emit({"error": str(busy), "busy": True})
                except ClientGone:
                    log(f"{label}: its client hung up while it waited; not run")
                except NotServed as exc:
                    emit({"error": str(exc), "not_served": True})
                except SpecErrors as many:
                    emit({"error": "; ".join(e.format() for e in many.errors), "user": True})
                except TraitflowError as exc:  # a TransientError (judge or bucket down) keeps its kind
                    emit({"error": str(exc), "user": True, "transient": isinstance(exc, TransientError)})
                except Exception as exc:  # noqa: BLE001 - reported to the client, the server goes on
                    log(traceback.format_exc())
                    emit({"error": f"{type(exc).__name__}: {exc}", "user": False})

    return Handler


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(root: Path, names: list[str], port: int, max_queue: int = 8, log: Callable[[str], None] = print,
          ready: Callable[[ThreadingHTTPServer, ModelServer], None] | None = None) -> None:
    """Listen, load the variants, write the discovery file, serve until interrupted, then remove the file."""
    from traitflow.server.client import find_server

    root = Path(root).resolve()
    running = find_server(root, honour_no_server=False)
    if running is not None:
        raise TraitflowError(f"a model server already serves {root}: PID {running.pid} at {running.url}; stop it first")
    try:  # the port first: a taken port must not cost a model load
        httpd = ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler)
    except OSError as exc:
        raise TraitflowError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})") from None
    try:
        state = ModelServer.start(root, names, max_queue=max_queue, log=log)
        httpd.RequestHandlerClass = _handler(state, log)
        httpd.daemon_threads = True
        discovery = state.root / DISCOVERY_FILE
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        info = {"url": url, "pid": os.getpid(), "token": state.token, "variants": state.variants}
        old = os.umask(0o077)  # the token is the owner's only
        try:
            atomic_write_text(discovery, json.dumps(info))
            os.chmod(discovery, 0o600)
        finally:
            os.umask(old)
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops it as Ctrl-C does
            signal.signal(signal.SIGTERM, _interrupt)
        log(f"serving {', '.join(names)} on {url} for {state.root} (one model task at a time, {max_queue} may wait)")
        try:
            if ready is not None:
                ready(httpd, state)
            httpd.serve_forever()
        finally:
            try:  # only our own file: another server may have started since
                if json.loads(discovery.read_text()).get("pid") == os.getpid():
                    discovery.unlink()
            except (OSError, ValueError):
                pass
    finally:
        httpd.server_close()
