"""Finding the model server of a project root and asking it to run a stage (see the package docstring)."""

import http.client
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traitflow.errors import TraitflowError, TransientError
from traitflow.server.wire import DISCOVERY_FILE, NO_SERVER_ENV, output_from_json, spec_digest
from traitflow.stages.context import StageContext, StageOutput

CONNECT_TIMEOUT_S = 5.0


class ServerUnavailable(Exception):
    """No answer, or not the models this request needs: the caller runs the work itself."""


@dataclass(frozen=True)
class ServerClient:
    url: str
    token: str
    pid: int
    variants: dict[str, str]  # name -> content version

    def _connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT_S)

    def _post(self, path: str, body: dict) -> http.client.HTTPResponse:
        conn = self._connect()
        try:
            conn.connect()
            conn.sock.settimeout(None)  # a stage may run for hours between two log lines
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise ServerUnavailable(f"model server at {self.url} did not answer ({exc})") from None
        if response.status in (200,):
            return response
        try:
            answer = json.loads(response.read() or b"{}")
        except ValueError:
            answer = {}
        conn.close()
        error = answer.get("error", f"HTTP {response.status}") if isinstance(answer, dict) else f"HTTP {response.status}"
        if response.status in (401, 409):  # a server restarted with a new token, or without these models
            raise ServerUnavailable(f"model server at {self.url}: {error}")
        if response.status == 503:
            raise _busy(self.url, error)
        raise TraitflowError(f"model server at {self.url}: {error}")

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """The events of one NDJSON answer; ServerUnavailable if it ends before its last line."""
        response = self._post(path, body)
        try:
            for line in response:
                event = json.loads(line)
                if "error" in event:
                    if event.get("not_served"):
                        raise ServerUnavailable(event["error"])
                    if event.get("busy"):
                        raise _busy(self.url, event["error"])
                    if event.get("user"):
                        raise (TransientError if event.get("transient") else TraitflowError)(event["error"])
                    raise RuntimeError(f"model server at {self.url}: {event['error']} (its log has the traceback)")
                yield event
                if "output" in event or "done" in event:
                    return
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise ServerUnavailable(f"model server at {self.url} stopped answering ({exc})") from None
        finally:
            response.close()
        raise ServerUnavailable(f"model server at {self.url} stopped before it finished")

    def run_stage(self, stage: Callable[..., StageOutput], ctx: StageContext, asset: str, dims: dict[str, str]) -> StageOutput:
        body = {"stage": f"{stage.__module__.rsplit('.', 1)[-1]}.{stage.__name__}", "asset": asset, "experiment": ctx.experiment.name,
                "partition": dims, "spec_digest": spec_digest(ctx.experiment), "storage": ctx.storage_override,
                "blocked_traits": ctx.blocked_traits}
        for event in self.stream("/stage", body):
            if "log" in event:
                ctx.log(event["log"])
            elif "output" in event:
                return output_from_json(event["output"])
        raise ServerUnavailable(f"model server at {self.url} sent no result")

    def generate(self, experiment: str, variant: str, prompt: str, **options: Any) -> Iterator[dict]:
        """`/generate`: the monitors, then one event per token, then `done` (see the service)."""
        return self.stream("/generate", {"experiment": experiment, "variant": variant, "prompt": prompt, **options})

    def capture(self, experiment: str, variant: str, sequences: list, layers: list[int], **options: Any) -> dict[str, Any]:
        from safetensors.torch import load

        response = self._post("/capture", {"experiment": experiment, "variant": variant, "sequences": sequences,
                                           "layers": layers, **options})
        try:
            return load(response.read())
        finally:
            response.close()


def _busy(url: str, error: str) -> TraitflowError:
    return TransientError(f"model server at {url} is {error}; retry later, or set {NO_SERVER_ENV}=1 to load locally")


def find_server(root: Path, honour_no_server: bool = True) -> ServerClient | None:
    """The running server of this project root, or None (none started, it stopped, it serves
    another root, or TRAITFLOW_NO_SERVER=1)."""
    if honour_no_server and os.environ.get(NO_SERVER_ENV, "") not in ("", "0"):
        return None
    try:
        info = json.loads((Path(root) / DISCOVERY_FILE).read_text())
        client = ServerClient(str(info["url"]), str(info["token"]), int(info["pid"]), dict(info["variants"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none written, or unreadable: as if no server ran
    conn = client._connect()
    try:
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
    except (OSError, ValueError, http.client.HTTPException):
        return None  # a file left by a server that was killed
    finally:
        conn.close()
    # The PID it wrote, and this root: a project copied with its .traitflow/ must not use the original's server.
    if not isinstance(health, dict) or health.get("pid") != client.pid or health.get("root") != str(Path(root).resolve()):
        return None
    return client


def run_stage(ctx: StageContext, stage: Callable[..., StageOutput], asset: str,
              dims: dict[str, str]) -> tuple[StageOutput, str | None]:
    """Run one stage (of `asset`) on one partition, on `ctx.server` when it can, else here. Returns
    the output and the server's URL when it ran there."""
    server = ctx.server
    if server is not None:
        try:
            return server.run_stage(stage, ctx, asset, dims), server.url
        except ServerUnavailable as why:
            ctx.log(f"{why}; running {stage.__name__} here, loading the model locally")
    return stage(ctx, **dims), None
