"""A judge behind any litellm model string: ``openai/gpt-4.1-mini``, ``anthropic/…``, ``ollama/…``,
``hosted_vllm/…``, with an optional ``api_base``. API keys come from the environment only
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, …); they never enter cache keys, logs or errors.

Every call asks for one integer at temperature 0, ``max_tokens`` 4, with ``logprobs`` and
``top_logprobs=20`` (dropped for providers without them, whose text is parsed instead).

Batches run on one background event loop (:func:`traitflow.judge.base.run_sync`) with at most
``max_concurrency`` calls in flight. Identical calls in a batch are sent once; calls found in
the cache are not sent at all. A failed call is retried ``max_retries`` times after
``backoff_s``, ``2 * backoff_s``, … (HTTP 5xx, 429, timeouts, dropped connections, malformed
replies); each try waits at most ``timeout_s``.

Failures and judgements
    A request *fails* when, after its retries, it got no usable chat completion: an HTTP error
    status (5xx, 429, 400, …), a timeout, a failed or dropped connection, or a malformed reply —
    a body that is not a chat completion (not JSON, no ``choices``, no message) or one with
    impossible log-probabilities (NaN, infinite, above 0, below -1e4; see
    :func:`traitflow.judge.base.logprob_problem`). A request that got a sane completion was
    *judged*, even when its score is ``None`` because the reply's integers carry too little
    probability mass or its text holds no number in range: that is the judge's answer, cached,
    counted in ``stats.none_count`` and not a failure.

    Each batch (one :meth:`LiteLLMJudge.score` call) then raises a one-line
    :class:`~traitflow.errors.TraitflowError` naming the judge model and its endpoint (secrets
    masked) when

    - authentication fails, permission is denied, the model or route is not found, an API key is
      missing or the model string is unknown — at once, and nothing more is sent;
    - every request failed, or more than ``max_failure_rate`` of them (failed requests /
      requests in the batch): ``judge openai/x at http://host/v1: 20 of 20 requests failed
      (HTTP 500: …)``; ``… unreachable at …`` when they all failed to connect;
    - not one reply of the batch held a number in range (no integer token at all among the top
      log-probabilities, no number in the text): the judge does not answer the prompt (a wrong
      model, or a reasoning model that spends its 4 tokens thinking). A single such reply is
      a ``None`` judgement; a whole batch of them is a misconfiguration;
    - the batch is not done within ``deadline_s``, retries and backoff included.

    Below the rate, failed requests score ``None``, count in ``stats.errors`` and are logged as
    a warning; they are never cached, so a re-run asks again.

Endpoints and secrets
    The endpoint is the ``api_base`` or, without one, the provider's base-URL environment
    variable (``OPENAI_BASE_URL``/``OPENAI_API_BASE``, ``<PROVIDER>_API_BASE``). Its identity
    (:func:`traitflow.judge.base.endpoint_identity`: no userinfo, query or fragment) is part of
    the cache key, so one server's replies are never served for another. Messages and logs show
    it through :func:`~traitflow.judge.base.redact_url` and pass through
    :func:`~traitflow.judge.base.redact`, which also masks the ``api_base``'s own userinfo and
    query values wherever a server echoes them.

litellm is imported lazily, with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first (otherwise
it fetches a price list from the network at import).
"""

import asyncio
import json
import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from traitflow.errors import TraitflowError, TransientError
from traitflow.judge.base import (
    Completion,
    JudgeRequest,
    JudgeScore,
    JudgeStats,
    MalformedReply,
    endpoint_identity,
    logprob_problem,
    redact,
    redact_url,
    redact_urls,
    run_sync,
    score_from_completion,
    url_secrets,
)
from traitflow.judge.cache import JudgeCache, cache_key
from traitflow.judge.prompts import JudgeCall, calls_for, combine
from traitflow.specs.models import JudgeSpec

__all__ = [
    "MAX_TOKENS",
    "SAMPLING",
    "TOP_LOGPROBS",
    "LiteLLMJudge",
    "completion_from_response",
    "import_litellm",
    "provider_api_base",
    "redact",
    "redact_url",
]

log = logging.getLogger(__name__)

MAX_TOKENS = 4
TOP_LOGPROBS = 20
SAMPLING = {"temperature": 0, "max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
CANCEL_WAIT_S = 5.0  # after a deadline or a fatal error, how long cancelled calls get to unwind


def import_litellm() -> Any:
    """Import litellm without its network fetch at import, and without its help banners."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    if hasattr(litellm, "telemetry"):
        litellm.telemetry = False
    return litellm


def provider_api_base(model: str, api_base: str | None) -> str | None:
    """The endpoint litellm will call for ``model``: ``api_base``, else the provider's base-URL
    environment variable (litellm's order for ``openai/``), else ``None`` (the provider's default)."""
    if api_base:
        return api_base
    provider = model.split("/", 1)[0].upper() if "/" in model else ""
    if not re.fullmatch(r"[A-Z0-9_]+", provider):
        return None
    names = ("OPENAI_BASE_URL", "OPENAI_API_BASE") if provider == "OPENAI" else (f"{provider}_API_BASE", f"{provider}_BASE_URL")
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


# --------------------------------------------------------------------------- reading a response
def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _number(value: Any, token: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReply(f"logprob {value!r} of token {token!r} is not a number")
    return float(value)


def completion_from_response(response: Any) -> Completion:
    """The reply text and first-token top log-probabilities of a chat-completion response.

    Raises:
        MalformedReply: no choices, no message, or impossible log-probabilities.
    """
    choices = _get(response, "choices")
    if not choices:
        raise MalformedReply("no choices in the reply")
    choice = choices[0]
    message = _get(choice, "message")
    if message is None:
        raise MalformedReply("no message in the reply")
    text = _get(message, "content") or ""
    content = _get(_get(choice, "logprobs"), "content") or []
    if not content:
        return Completion(text=str(text))
    first = content[0]
    token = str(_get(first, "token") or "")
    own = _number(_get(first, "logprob"), token)
    top = _get(first, "top_logprobs") or []
    pairs = [(str(_get(t, "token") or ""), _number(_get(t, "logprob"), str(_get(t, "token") or ""))) for t in top]
    if not pairs and own is not None:
        pairs = [(token, own)]
    checked = [(t, lp) for t, lp in pairs if lp is not None]
    values = checked + ([(token, own)] if own is not None else [])
    # each value on its own, then the alternatives' sum (the first token is normally one of them)
    problem = next((p for p in (logprob_problem([v]) for v in values) if p), None) or logprob_problem(checked)
    if problem is not None:
        raise MalformedReply(problem)
    return Completion(text=str(text), top_logprobs=tuple(checked) if checked else None)


# --------------------------------------------------------------------------- failures
FATAL, REJECTED, CONNECTION, TIMEOUT, MALFORMED, TRANSIENT = (
    "fatal",
    "rejected",
    "connection",
    "timeout",
    "malformed",
    "transient",
)
_LITELLM_PREFIX = re.compile(r"litellm\.(\w+): (?:\w+: )?(?:\w+Exception - )?(.*)")
_ERROR_CODE = re.compile(r"^Error code: \d+ - ")
_NESTED_PREFIX = re.compile(r"^(?:LiteLLM: )+")
_MALFORMED_MESSAGES = ("no 'choices'", "Invalid response object", "Empty or invalid response", "Expecting value")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def classify(exc: BaseException) -> str:
    """``fatal`` (stop the batch), ``rejected`` (this request; no retry), or ``connection``,
    ``timeout``, ``malformed``, ``transient`` (retry). Anything that is not a provider error, a
    timeout or a malformed reply is a bug and is re-raised."""
    import openai

    if isinstance(exc, TraitflowError):
        return FATAL
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TIMEOUT
    if isinstance(exc, MalformedReply):
        return MALFORMED
    if not isinstance(exc, openai.OpenAIError):
        raise exc
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
        return FATAL
    message = str(exc)
    if "Missing credentials" in message or "api_key client option must be set" in message:
        return FATAL
    chain = _chain(exc)
    if any(isinstance(e, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError) for e in chain):
        return TIMEOUT
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return REJECTED
    if _connection_failure(exc):
        return CONNECTION
    if _http_status(exc) is None and (
        any(isinstance(e, json.JSONDecodeError) for e in chain) or any(m in message for m in _MALFORMED_MESSAGES)
    ):
        return MALFORMED
    return TRANSIENT


def _connection_failure(exc: BaseException) -> bool:
    """True when the chain of ``exc`` holds a failure to connect (refused, DNS, reset), not a timeout."""
    import openai

    for current in _chain(exc):
        if isinstance(current, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
            return False
        if isinstance(current, openai.APIConnectionError | ConnectionError):
            return True
        name = type(current).__name__
        if name in ("ConnectError", "ClientConnectorError", "ClientConnectionError", "gaierror", "ServerDisconnectedError"):
            return True
    return False


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status the server really sent (litellm also invents 500 for client-side errors)."""
    for current in _chain(exc):
        response = getattr(current, "response", None)
        if type(current).__name__ == "HTTPStatusError" and response is not None:
            return getattr(response, "status_code", None)
        if type(current).__module__.split(".")[0] == "openai" and isinstance(getattr(current, "status_code", None), int):
            return current.status_code
    return None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    # "litellm.Timeout: Timeout: OpenAIException - Request timed out." -> "Timeout: Request timed out."
    match = _LITELLM_PREFIX.match(text)
    if match:
        text = f"{match.group(1)}: {match.group(2)}"
    return _ERROR_CODE.sub("", text)[:limit]


def _detail(exc: BaseException | str, limit: int = 160) -> str:
    """The message of ``exc`` without litellm's class-name prefixes (nested ones too)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    while match := _LITELLM_PREFIX.match(text):
        text = match.group(2)
    return _NESTED_PREFIX.sub("", _ERROR_CODE.sub("", text))[:limit]


def describe(exc: BaseException, kind: str, timeout_s: float) -> str:
    """What went wrong with one try, in a few words: ``HTTP 503: …``, ``timed out after 5 s``, …"""
    if kind == TIMEOUT:
        return f"timed out after {timeout_s:g} s"
    if kind == CONNECTION:
        inner = next((str(e) for e in reversed(_chain(exc)) if str(e).strip()), "")
        return f"connection failed: {_detail(inner) if inner else type(exc).__name__}"
    if kind == MALFORMED:
        return f"malformed reply: {_detail(exc)}"
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status}: {_detail(exc)}"
    return _one_line(exc)


@dataclass
class _CallResult:
    completion: Completion | None
    cached: bool = False
    failure: str | None = None  # REJECTED, CONNECTION, TIMEOUT, MALFORMED or TRANSIENT
    message: str = ""


@dataclass
class _Outcome:
    score: JudgeScore
    failure: tuple[str, str] | None = None  # (kind, message) when the request failed
    judged: bool = True  # the judge was asked (False: nothing to ask, e.g. an empty answer for position)
    numberless: bool = False  # judged, and no reply behind it held a number in range
    text: str = ""  # a reply text, for messages


@dataclass
class _Batch:
    semaphore: asyncio.Semaphore
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    fatal: TraitflowError | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    last_failure: str = ""

    def fail(self, error: TraitflowError) -> None:
        if self.fatal is None:
            self.fatal = error
        self.stop.set()


# --------------------------------------------------------------------------- the judge
class LiteLLMJudge:
    """A judge behind a litellm model string.

    Args:
        spec: the judge spec (model, api_base, max_concurrency, timeout_s, max_retries,
            backoff_s, max_failure_rate, deadline_s).
        cache: the reply cache, or None for none.
        model: the judge's name in cache keys and messages (default: ``spec.model``).
        litellm_model: the model string given to litellm (default: ``spec.model``).

    Attributes:
        model: the judge's name, safe for artifacts (URL secrets masked).
        endpoint: the endpoint's identity (no userinfo, query or fragment), ``""`` for the
            provider's default; part of every cache key.

    Example:
        >>> judge = LiteLLMJudge(JudgeSpec(model="openai/gpt-4.1-mini"), JudgeCache(path))
        >>> judge.score([coherence_request("How are you?", "Fine, thanks.")])[0].score
        97.3
    """

    numberless_batch_fails = True  # a batch in which no reply held a number raises (see the module docstring)

    def __init__(self, spec: JudgeSpec, cache: JudgeCache | None, *, model: str | None = None, litellm_model: str | None = None):
        self.spec = spec
        self.model = redact_urls(model or spec.model)
        self.litellm_model = litellm_model or spec.model
        self.stats = JudgeStats()
        self._cache = cache
        self._checked = False
        base = provider_api_base(self.litellm_model, spec.api_base)
        self.endpoint = endpoint_identity(base)
        self._where = redact_url(base) if base else "the provider's default endpoint"
        self._secrets = url_secrets(base)

    # ---------------------------------------------------------------- messages
    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _label(self) -> str:
        """``judge <model> at <endpoint>`` for messages (``judge <model>`` for an in-process judge)."""
        return f"judge {self.model} at {self._where}" if self._where else f"judge {self.model}"

    # ---------------------------------------------------------------- setup
    def check(self) -> None:
        """Import litellm and check the model string and API keys (once); TraitflowError if wrong."""
        if self._checked:
            return
        litellm = import_litellm()
        try:
            litellm.get_llm_provider(model=self.litellm_model, api_base=self.spec.api_base)
        except Exception:  # noqa: BLE001 - litellm raises BadRequestError with a long help text
            raise TraitflowError(
                f"judge model {self.model!r} is not a litellm model string (expected provider/model, e.g. "
                "openai/gpt-4.1-mini, anthropic/claude-3-5-haiku-latest, ollama/llama3, hosted_vllm/<name>; "
                "or keywords, or local:<variant>)"
            ) from None
        try:
            env = litellm.validate_environment(model=self.litellm_model, api_base=self.spec.api_base)
        except Exception:  # noqa: BLE001 - best effort: some providers cannot tell
            env = {}
        missing = [k for k in env.get("missing_keys") or [] if not k.endswith("_API_BASE")]
        if missing:
            hint = (
                " (for a local OpenAI-compatible server without keys, use hosted_vllm/<model> with api_base)"
                if ("OPENAI_API_KEY" in missing)
                else ""
            )
            raise TraitflowError(f"judge {self.model} needs {', '.join(missing)} in the environment{hint}")
        self._checked = True

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    # ---------------------------------------------------------------- scoring
    def score(self, requests: list[JudgeRequest]) -> list[JudgeScore]:
        """Score ``requests`` concurrently (at most ``max_concurrency`` in flight), in order.

        Raises:
            TraitflowError: see the module docstring (fatal errors, too many failures, no reply
                with a number, past ``deadline_s``).
        """
        if not requests:
            return []
        return run_sync(self.ascore(list(requests)))

    async def ascore(self, requests: list[JudgeRequest]) -> list[JudgeScore]:
        """The async form of :meth:`score`, for callers already in an event loop."""
        if not requests:
            return []
        batch = _Batch(semaphore=asyncio.Semaphore(self.spec.max_concurrency))
        tasks = [asyncio.ensure_future(self._request(r, batch)) for r in requests]
        everything = asyncio.ensure_future(asyncio.wait(tasks))  # cancelling this waiter cancels no request
        stopped = asyncio.ensure_future(batch.stop.wait())
        try:
            await asyncio.wait({everything, stopped}, timeout=self.spec.deadline_s, return_when=asyncio.FIRST_COMPLETED)
        finally:  # past the deadline, after a fatal error, or when the caller is cancelled: stop every call
            await self._cancel([everything, stopped, *tasks, *batch.tasks.values()])
        finished = [t for t in tasks if t.done() and not t.cancelled()]
        bugs = [t.exception() for t in finished if t.exception() is not None]  # classify re-raises what is not a provider error
        outcomes: list[_Outcome] = [t.result() for t in finished if t.exception() is None]
        if bugs:
            raise bugs[0]
        if batch.fatal is not None or len(outcomes) < len(requests):
            self.stats.requests += len(requests)
            self.stats.errors += len(requests) - sum(1 for o in outcomes if o.failure is None)
            if batch.fatal is not None:
                raise batch.fatal
            raise TransientError(self._past_deadline(len(requests), outcomes, batch.last_failure))
        return self._settle(requests, outcomes)

    @staticmethod
    async def _cancel(futures: list[asyncio.Future]) -> None:
        pending = [f for f in futures if not f.done()]
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CANCEL_WAIT_S)

    def _settle(self, requests: list[JudgeRequest], outcomes: list[_Outcome]) -> list[JudgeScore]:
        """Count the batch, and raise when it failed (see the module docstring)."""
        scores = [o.score for o in outcomes]
        failures = [o.failure for o in outcomes if o.failure is not None]
        self.stats.requests += len(requests)
        self.stats.none_count += sum(1 for s in scores if s.score is None)
        self.stats.errors += len(failures)
        n, total = len(failures), len(requests)
        if failures:
            kinds = {kind for kind, _ in failures}
            what = f"{n} of {total} requests failed ({self._summary(failures)})"
            # Down, timing out, overloaded: a later try may pass. Rejected or malformed: it will not.
            error = TransientError if kinds <= {CONNECTION, TIMEOUT, TRANSIENT} else TraitflowError
            if n == total:
                if kinds == {CONNECTION}:
                    raise error(f"judge {self.model} unreachable at {self._where}: {what}")
                raise error(f"{self._label()}: {what}")
            if n / total > self.spec.max_failure_rate:
                raise error(f"{self._label()}: {what}, more than judge.max_failure_rate {self.spec.max_failure_rate:g}")
            log.warning("%s: %s; they score None", self._label(), what)
        judged = [o for o in outcomes if o.failure is None and o.judged]
        if self.numberless_batch_fails and judged and all(o.numberless for o in judged):
            sample = next((o.text for o in judged if o.text.strip()), "")
            raise TraitflowError(
                f"{self._label()}: no reply to any of {len(judged)} requests held a number in range "
                f"(first: {self._redact(sample[:40])!r}); is this a model that answers the prompt with an integer?"
            )
        return scores

    def _summary(self, failures: list[tuple[str, str]], limit: int = 400) -> str:
        """The causes, most common first: ``HTTP 500: …`` or ``2× HTTP 500: …; 1× timed out after 5 s``."""
        counts = Counter(message for _, message in failures)
        if len(counts) == 1:
            text = next(iter(counts))
        else:
            text = "; ".join(f"{count}× {message[:120]}" for message, count in counts.most_common())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def _past_deadline(self, total: int, finished: list[_Outcome], last_failure: str) -> str:
        last = f"; last error: {last_failure}" if last_failure else ""
        return (
            f"{self._label()}: batch of {total} requests not done within judge.deadline_s = {self.spec.deadline_s:g} s "
            f"({len(finished)} finished{last})"
        )

    async def _request(self, request: JudgeRequest, batch: _Batch) -> _Outcome:
        calls = calls_for(request)
        if not calls:
            return _Outcome(JudgeScore(None, None, cached=False), judged=False)
        results = await asyncio.gather(*(self._shared_call(call, batch) for call in calls))
        for result in results:
            if result.completion is None:
                return _Outcome(JudgeScore(None, None, cached=False), failure=(result.failure or TRANSIENT, result.message))
        parsed = [
            score_from_completion(result.completion, call.low, call.high, call.threshold)
            for call, result in zip(calls, results, strict=True)
        ]
        score, mass = combine(request, parsed)
        numberless = all(s is None and not m for s, m in parsed)
        return _Outcome(
            JudgeScore(score, mass, cached=all(r.cached for r in results)),
            numberless=numberless,
            text=results[0].completion.text,
        )

    def _key(self, call: JudgeCall) -> str:
        return cache_key(self.model, call.template, call.prompt, SAMPLING, endpoint=self.endpoint)

    async def _shared_call(self, call: JudgeCall, batch: _Batch) -> _CallResult:
        key = self._key(call)
        task = batch.tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(self._call(call, key, batch))
            batch.tasks[key] = task
        return await task

    def _stopped(self, batch: _Batch) -> _CallResult:
        return _CallResult(None, failure=TRANSIENT, message="stopped: " + str(batch.fatal))

    async def _call(self, call: JudgeCall, key: str, batch: _Batch) -> _CallResult:
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return _CallResult(hit, cached=True)
        if not self._checked:  # first miss: import litellm, check the model string and keys
            try:
                self.check()
            except TraitflowError as exc:
                batch.fail(exc)
                return _CallResult(None, failure=TRANSIENT, message=str(exc))
        failure, message = TRANSIENT, ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                delay = self.spec.backoff_s * (2 ** (attempt - 1)) * (1.0 + 0.1 * random.random())
                await asyncio.sleep(delay)
            if batch.fatal is not None:
                return self._stopped(batch)
            async with batch.semaphore:
                if batch.fatal is not None:
                    return self._stopped(batch)
                self.stats.calls += 1
                try:
                    completion = await self._complete(call.prompt)
                except Exception as exc:  # noqa: BLE001 - sorted by classify; bugs are re-raised there
                    failure = classify(exc)
                    message = self._redact(describe(exc, failure, self.spec.timeout_s))
                    batch.last_failure = message
                    if failure == FATAL:
                        batch.fail(
                            TraitflowError(self._redact(str(exc)))
                            if isinstance(exc, TraitflowError)
                            else TraitflowError(f"{self._label()}: {message}")
                        )
                        return _CallResult(None, failure=TRANSIENT, message=message)
                    if failure == REJECTED:
                        return _CallResult(None, failure=REJECTED, message=message)
                    continue
            if self._cache is not None:
                self._cache.put(key, self.model, call.template, completion)
            return _CallResult(completion)
        return _CallResult(None, failure=failure, message=message)

    async def _complete(self, prompt: str) -> Completion:
        """One chat completion through litellm; the guard timeout backs up litellm's own."""
        litellm = import_litellm()
        coro = litellm.acompletion(
            model=self.litellm_model,
            messages=[{"role": "user", "content": prompt}],
            api_base=self.spec.api_base,
            timeout=self.spec.timeout_s,
            num_retries=0,
            max_retries=0,
            drop_params=True,
            **SAMPLING,
        )
        response = await asyncio.wait_for(coro, timeout=self.spec.timeout_s * 2 + 5)
        return completion_from_response(response)
