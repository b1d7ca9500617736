"""A judge behind any litellm model string: ``openai/gpt-4.1-mini``, ``anthropic/…``, ``ollama/…``,
``hosted_vllm/…``, with an optional ``api_base``. API keys come from the environment only
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, …); they never enter cache keys, logs or errors.

Every call asks for one integer at temperature 0, ``max_tokens`` 4, with ``logprobs`` and
``top_logprobs=20`` (dropped for providers without them, whose text is parsed instead).

Batches run on one background event loop (:func:`traitflow.judge.base.run_sync`) with at most
``max_concurrency`` calls in flight. Identical calls in a batch are sent once; calls found in
the cache are not sent at all. A failed call is retried ``max_retries`` times after
``backoff_s``, ``2 * backoff_s``, … (HTTP 5xx, 429, timeouts, dropped connections); each try
waits at most ``timeout_s``.

What a failure becomes:

- authentication failed, permission denied, model not found (at the provider), a missing API
  key, an unknown model string: :class:`~traitflow.errors.TraitflowError` at once, nothing
  more is sent;
- a request still failing after its retries: score ``None`` and ``stats.errors += 1``;
- *every* request of a batch failing to connect (or every one rejected as a bad request):
  ``TraitflowError("judge <model> unreachable at <api_base>: …")`` (or ``… rejected every
  request: …``), since a batch of nothing but ``None`` means the judge is misconfigured.

litellm is imported lazily, with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first (otherwise
it fetches a price list from the network at import).
"""

import asyncio
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.judge.base import (
    Completion,
    JudgeRequest,
    JudgeScore,
    JudgeStats,
    run_sync,
    score_from_completion,
)
from traitflow.judge.cache import JudgeCache, cache_key
from traitflow.judge.prompts import JudgeCall, calls_for, combine
from traitflow.specs.models import JudgeSpec

__all__ = ["MAX_TOKENS", "SAMPLING", "TOP_LOGPROBS", "LiteLLMJudge", "completion_from_response", "import_litellm", "redact"]

log = logging.getLogger(__name__)

MAX_TOKENS = 4
TOP_LOGPROBS = 20
SAMPLING = {"temperature": 0, "max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": TOP_LOGPROBS}


def import_litellm() -> Any:
    """Import litellm without its network fetch at import, and without its help banners."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    if hasattr(litellm, "telemetry"):
        litellm.telemetry = False
    return litellm


# --------------------------------------------------------------------------- secrets and messages
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_LITELLM_PREFIX = re.compile(r"litellm\.(\w+): (?:\w+: )?(?:\w+Exception - )?(.*)")
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|key|sess)-[A-Za-z0-9_\-]{6,}")


def redact(text: str) -> str:
    """``text`` with the values of secret-looking environment variables and key-like strings masked."""
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRET_NAME.search(name):
            text = text.replace(value, "***")
    return _KEY_LIKE.sub(lambda m: m.group(1) + "-***", text)


def _one_line(exc: BaseException, limit: int = 240) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    # "litellm.Timeout: Timeout: OpenAIException - Request timed out." -> "Timeout: Request timed out."
    match = _LITELLM_PREFIX.match(text)
    if match:
        text = f"{match.group(1)}: {match.group(2)}"
    return redact(text)[:limit]


# --------------------------------------------------------------------------- reading a response
def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def completion_from_response(response: Any) -> Completion:
    """The reply text and first-token top log-probabilities of a chat-completion response."""
    choices = _get(response, "choices") or []
    if not choices:
        return Completion(text="")
    choice = choices[0]
    text = _get(_get(choice, "message"), "content") or ""
    content = _get(_get(choice, "logprobs"), "content") or []
    if not content:
        return Completion(text=str(text))
    first = content[0]
    top = _get(first, "top_logprobs") or []
    pairs = [(str(_get(t, "token") or ""), _get(t, "logprob")) for t in top]
    if not pairs and _get(first, "token") is not None:
        pairs = [(str(_get(first, "token")), _get(first, "logprob"))]
    pairs = [(t, float(lp)) for t, lp in pairs if isinstance(lp, int | float)]
    return Completion(text=str(text), top_logprobs=tuple(pairs) if pairs else None)


# --------------------------------------------------------------------------- failures
FATAL, REJECTED, CONNECTION, TRANSIENT = "fatal", "rejected", "connection", "transient"


def classify(exc: BaseException) -> str:
    """``fatal`` (stop the batch), ``rejected`` (this request; no retry), ``connection`` or
    ``transient`` (retry). Anything that is not a provider error is a bug and is re-raised."""
    import openai

    if isinstance(exc, TraitflowError):
        return FATAL
    if isinstance(exc, asyncio.TimeoutError):
        return TRANSIENT
    if not isinstance(exc, openai.OpenAIError):
        raise exc
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
        return FATAL
    message = str(exc)
    if "Missing credentials" in message or "api_key client option must be set" in message:
        return FATAL
    if isinstance(exc, openai.APITimeoutError):
        return TRANSIENT
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return REJECTED
    if _connection_failure(exc):
        return CONNECTION
    return TRANSIENT


def _connection_failure(exc: BaseException) -> bool:
    """True when the chain of ``exc`` holds a failure to connect (refused, DNS, reset), not a timeout."""
    import openai

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
            return False
        if isinstance(current, openai.APIConnectionError | ConnectionError):
            return True
        name = type(current).__name__
        if name in ("ConnectError", "ClientConnectorError", "ClientConnectionError", "gaierror", "ServerDisconnectedError"):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass
class _CallResult:
    completion: Completion | None
    cached: bool = False
    failure: str | None = None  # REJECTED, CONNECTION or TRANSIENT
    message: str = ""


@dataclass
class _Batch:
    semaphore: asyncio.Semaphore
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    fatal: TraitflowError | None = None


# --------------------------------------------------------------------------- the judge
class LiteLLMJudge:
    """A judge behind a litellm model string.

    Args:
        spec: the judge spec (model, api_base, max_concurrency, timeout_s, max_retries, backoff_s).
        cache: the reply cache, or None for none.
        model: the judge's name in cache keys and messages (default: ``spec.model``).
        litellm_model: the model string given to litellm (default: ``spec.model``).

    Example:
        >>> judge = LiteLLMJudge(JudgeSpec(model="openai/gpt-4.1-mini"), JudgeCache(path))
        >>> judge.score([coherence_request("How are you?", "Fine, thanks.")])[0].score
        97.3
    """

    def __init__(self, spec: JudgeSpec, cache: JudgeCache | None, *, model: str | None = None, litellm_model: str | None = None):
        self.spec = spec
        self.model = model or spec.model
        self.litellm_model = litellm_model or spec.model
        self.stats = JudgeStats()
        self._cache = cache
        self._checked = False

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
        """Score ``requests`` concurrently (at most ``max_concurrency`` in flight), in order."""
        if not requests:
            return []
        return run_sync(self.ascore(list(requests)))

    async def ascore(self, requests: list[JudgeRequest]) -> list[JudgeScore]:
        """The async form of :meth:`score`, for callers already in an event loop."""
        if not requests:
            return []
        batch = _Batch(semaphore=asyncio.Semaphore(self.spec.max_concurrency))
        outcomes = await asyncio.gather(*(self._request(r, batch) for r in requests))
        scores = [score for score, _ in outcomes]
        failures = [failure for _, failure in outcomes if failure is not None]
        self.stats.requests += len(requests)
        self.stats.none_count += sum(1 for s in scores if s.score is None)
        self.stats.errors += len(failures)
        if batch.fatal is not None:
            raise batch.fatal
        if failures:
            log.warning(
                "judge %s: %d of %d requests failed (score None): %s", self.model, len(failures), len(requests), failures[0][1]
            )
        if failures and len(failures) == len(requests):
            kinds = {kind for kind, _ in failures}
            if kinds in ({CONNECTION}, {REJECTED}):
                raise TraitflowError(self._all_failed(kinds.pop(), failures[0][1]))
        return scores

    def _all_failed(self, kind: str, message: str) -> str:
        if kind == CONNECTION:
            where = self.spec.api_base or "the provider's default endpoint"
            return f"judge {self.model} unreachable at {where}: {message}"
        return f"judge {self.model} rejected every request: {message}"

    async def _request(self, request: JudgeRequest, batch: _Batch) -> tuple[JudgeScore, tuple[str, str] | None]:
        calls = calls_for(request)
        if not calls:
            return JudgeScore(None, None, cached=False), None
        results = await asyncio.gather(*(self._shared_call(call, batch) for call in calls))
        for result in results:
            if result.completion is None:
                return JudgeScore(None, None, cached=False), (result.failure or TRANSIENT, result.message)
        parsed = [
            score_from_completion(result.completion, call.low, call.high, call.threshold)
            for call, result in zip(calls, results, strict=True)
        ]
        score, mass = combine(request, parsed)
        return JudgeScore(score, mass, cached=all(r.cached for r in results)), None

    def _key(self, call: JudgeCall) -> str:
        return cache_key(self.model, call.template, call.prompt, SAMPLING)

    async def _shared_call(self, call: JudgeCall, batch: _Batch) -> _CallResult:
        key = self._key(call)
        task = batch.tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(self._call(call, key, batch))
            batch.tasks[key] = task
        return await task

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
                batch.fatal = batch.fatal or exc
                return _CallResult(None, failure=TRANSIENT, message=str(exc))
        failure, message = TRANSIENT, ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                delay = self.spec.backoff_s * (2 ** (attempt - 1)) * (1.0 + 0.1 * random.random())
                await asyncio.sleep(delay)
            if batch.fatal is not None:
                return _CallResult(None, failure=TRANSIENT, message="stopped: " + str(batch.fatal))
            async with batch.semaphore:
                if batch.fatal is not None:
                    return _CallResult(None, failure=TRANSIENT, message="stopped: " + str(batch.fatal))
                self.stats.calls += 1
                try:
                    completion = await self._complete(call.prompt)
                except Exception as exc:  # noqa: BLE001 - sorted by classify; bugs are re-raised there
                    failure, message = classify(exc), _one_line(exc)
                    if failure == FATAL:
                        if batch.fatal is None:
                            batch.fatal = (
                                exc if isinstance(exc, TraitflowError) else TraitflowError(f"judge {self.model}: {message}")
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
