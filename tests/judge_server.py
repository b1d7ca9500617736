"""A small OpenAI-compatible chat-completions server for judge tests, on 127.0.0.1.

It speaks just enough of ``POST /v1/chat/completions`` (also ``/chat/completions``) for litellm's
``openai/`` and ``hosted_vllm/`` providers: a JSON body in, a ``chat.completion`` object out, with
first-token ``logprobs`` (``top_logprobs``) when the behaviour asks for them.

What a request gets is a :class:`Behaviour`: the first rule whose ``marker`` occurs in the
request's messages wins, else ``server.default``. A behaviour can

- answer with a distribution over first tokens (``{"70": 0.5, "80": 0.3, "foo": 0.2}``) as
  ``top_logprobs`` (the most likely token is the reply text),
- answer text only, without logprobs (``logprobs=False``),
- answer garbage text (``text="banana"``, ``logprobs=False``),
- answer exact log-probabilities, impossible ones included (``raw_logprobs={"70": float("nan")}``),
- answer HTTP 200 with a body that is not a chat completion (``body="<html>…"``),
- fail with HTTP ``status`` for its first ``fail_first`` requests (with ``error_message``),
- drop the connection without answering (``drop=True``),
- sleep ``delay_s`` before answering (beyond the client's timeout),
- hang (``hang=True``) until the server is reset or stopped, at most ``HANG_LIMIT_S``,
- echo the ``Authorization`` header in its error message (``echo_auth``), as real APIs do.

Every request is counted (``server.count``) and kept (``server.requests``: parsed bodies;
``server.paths``: the request paths); ``server.max_in_flight`` is the most requests it served at
once. Sleeping and hanging requests wake up when the server is reset or stopped, so no test
leaves a handler thread waiting.

More servers than the shared one: ``with JudgeServer() as other: …`` starts and stops one.

Use it as the ``judge_server`` fixture (one server per process; each test gets it reset)::

    from tests.judge_server import judge_server_fixture  # noqa: F401  (provides `judge_server`)

    def test_x(judge_server):
        judge_server.default = Behaviour(distribution={"70": 0.5, "80": 0.3, "foo": 0.2})
        ... JudgeSpec(model="openai/judge", api_base=judge_server.url) ...
        assert judge_server.count == 1
"""

import atexit
import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

__all__ = ["Behaviour", "JudgeServer", "judge_server", "judge_server_fixture", "shared_server"]


@dataclass
class Behaviour:
    """What the server does with a request (see the module docstring)."""

    distribution: dict[str, float] = field(default_factory=lambda: {"50": 1.0})
    logprobs: bool = True
    text: str | None = None  # reply text; default: the most likely token of the distribution
    raw_logprobs: dict[str, float] | None = None  # token -> logprob, sent as is (NaN and Infinity too)
    body: str | None = None  # answer HTTP 200 with exactly this body instead of a chat completion
    status: int = 500
    fail_first: int = 0  # answer HTTP `status` to the first N requests this behaviour serves
    error_message: str = "test server failure"
    drop: bool = False  # close the connection without an answer
    delay_s: float = 0.0
    hang: bool = False  # wait until the server is reset or stopped (at most HANG_LIMIT_S), then answer
    echo_auth: bool = False  # put the request's Authorization header into the error message (as some APIs do)
    served: int = 0  # requests this behaviour has served so far (fail_first counts these)

    def reply_text(self) -> str:
        if self.text is not None:
            return self.text
        return max(self.distribution.items(), key=lambda kv: kv[1])[0]


HANG_LIMIT_S = 30.0  # the longest a hanging request waits for a reset


class JudgeServer:
    """A threaded HTTP server; ``url`` is the ``api_base`` to give litellm (ends in ``/v1``)."""

    def __init__(self) -> None:
        self.default = Behaviour()
        self.rules: list[tuple[str, Behaviour]] = []
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.in_flight = 0  # requests of this generation (since the last reset) being served
        self.max_in_flight = 0
        self._generation = 0
        self._wake = threading.Event()  # set (and replaced) on reset and stop: sleeping requests return
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="judge-server", daemon=True)

    # ---------------------------------------------------------------- control
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.default = Behaviour()
            self.rules = []
            self.requests = []
            self.paths = []
            self.max_in_flight = 0
            self.in_flight = 0
            self._generation += 1  # requests still sleeping from before the reset no longer count
            self._wake.set()
            self._wake = threading.Event()

    def rule(self, marker: str, behaviour: Behaviour) -> None:
        """Requests whose messages contain ``marker`` get ``behaviour`` (first matching rule wins)."""
        with self._lock:
            self.rules.append((marker, behaviour))

    def start(self) -> "JudgeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._wake.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving
    def _pick(self, body: dict) -> tuple[Behaviour, bool]:
        text = json.dumps(body.get("messages", []))
        with self._lock:
            behaviour = next((b for marker, b in self.rules if marker in text), self.default)
            fail = behaviour.served < behaviour.fail_first
            behaviour.served += 1
        return behaviour, fail

    def _completion(self, body: dict, behaviour: Behaviour) -> dict:
        text = behaviour.reply_text()
        choice: dict = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if behaviour.logprobs and body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            if behaviour.raw_logprobs is not None:
                top = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())} for tok, lp in behaviour.raw_logprobs.items()]
            else:
                ranked = sorted(behaviour.distribution.items(), key=lambda kv: -kv[1])[: max(k, 1)]
                top = [
                    {"token": tok, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(tok.encode())} for tok, p in ranked
                ]
            first = top[0]
            choice["logprobs"] = {"content": [dict(first, top_logprobs=top if k else [])], "refusal": None}
        return {
            "id": f"chatcmpl-test-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "judge"),
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def _send(self, status: int, payload: dict | str) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()  # NaN stays NaN
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
                    return
                with server._lock:
                    server.requests.append(body)
                    server.paths.append(self.path)
                    generation = server._generation
                    wake = server._wake
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                finished = False

                def finish() -> None:  # before the answer goes out: the client may send its next request at once
                    nonlocal finished
                    with server._lock:
                        if not finished and generation == server._generation:
                            server.in_flight -= 1
                        finished = True

                try:
                    behaviour, fail = server._pick(body)
                    if behaviour.delay_s or behaviour.hang:
                        wake.wait(HANG_LIMIT_S if behaviour.hang else behaviour.delay_s)
                    finish()
                    if behaviour.drop:
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    if fail:
                        message = behaviour.error_message
                        if behaviour.echo_auth:
                            message = f"Incorrect API key provided: {self.headers.get('Authorization', '')}"
                        self._send(behaviour.status, {"error": {"message": message, "type": "server_error"}})
                        return
                    if behaviour.body is not None:
                        self._send(200, behaviour.body)
                        return
                    self._send(200, server._completion(body, behaviour))
                finally:
                    finish()

        return Handler


_SHARED: list[JudgeServer] = []
_SHARED_LOCK = threading.Lock()


def shared_server() -> JudgeServer:
    """The process's one running :class:`JudgeServer` (started on first use, stopped at exit)."""
    with _SHARED_LOCK:
        if not _SHARED:
            server = JudgeServer().start()
            atexit.register(server.stop)
            _SHARED.append(server)
        return _SHARED[0]


@pytest.fixture(name="judge_server")
def judge_server_fixture() -> JudgeServer:
    """The shared :class:`JudgeServer`, reset (default behaviour, no rules, zero counts) for this test."""
    server = shared_server()
    server.reset()
    return server


judge_server = judge_server_fixture  # either import works; importing judge_server_fixture keeps ruff's F811 quiet
