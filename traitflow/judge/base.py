"""The judge interface: requests, scores, counters, and how a score is read from a reply.

A judge turns :class:`JudgeRequest` objects into :class:`JudgeScore` objects, in order. Every
backend (a litellm model, a local model variant, the keywords judge) has the same
:class:`Judge` shape, so callers never branch on the backend.

Scores from a model
    The judge is asked for one integer and its first reply token is read with its top-20
    log-probabilities. The tokens that are ASCII integers in the prompt's range (0-100 for
    scores) carry probability mass ``mass = sum(p)``; the score is their probability-weighted
    mean ``sum(p * value) / mass``. When ``mass`` is below the prompt's threshold (0.25; 0.1 for
    coherence) the judge had no confident numeric answer and the score is ``None`` (the mass is
    still reported). When the provider returns no log-probabilities (Anthropic, some local
    servers), the first number in the reply text is the score (``mass`` is ``None``).

    Example: top log-probabilities {"70": ln 0.5, "80": ln 0.3, "foo": ln 0.2} give
    mass 0.8 and score (70 * 0.5 + 80 * 0.3) / 0.8 = 73.75.

None is a result, not a gap: :class:`JudgeStats` counts it (``none_count``, ``none_rate``) so
callers show the rate instead of silently averaging over the scores that exist.

A reply that is not a sane chat completion is not a judgement but a failure
(:class:`MalformedReply`): no choices or no message, or log-probabilities no model produces —
NaN, infinite, above 0 by more than a rounding error (:data:`LOGPROB_EPSILON`), below
:data:`LOGPROB_FLOOR` (OpenAI and vLLM floor at -9999), or top alternatives whose probabilities
sum to more than 1 (beyond :data:`PROBABILITY_SLACK`). Such values never reach a score.

Secrets and endpoints
    :func:`redact_url` masks a URL's userinfo and query values (``http://***@host/v1?key=***``);
    :func:`redact` masks secret environment values, key-like strings and URL secrets in free
    text; :func:`endpoint_identity` is the judge's endpoint with userinfo, query and fragment
    removed (what the cache key holds, never a secret).
"""

import asyncio
import math
import os
import re
import threading
from collections.abc import Coroutine, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import SplitResult, urlsplit, urlunsplit

from traitflow.specs.models import Keywords

__all__ = [
    "COHERENCE_MASS_THRESHOLD",
    "LOGPROB_EPSILON",
    "LOGPROB_FLOOR",
    "MASS_THRESHOLD",
    "PROBABILITY_SLACK",
    "Completion",
    "Judge",
    "JudgeRequest",
    "JudgeScore",
    "JudgeStats",
    "MalformedReply",
    "RequestKind",
    "endpoint_identity",
    "logprob_problem",
    "redact",
    "redact_url",
    "redact_urls",
    "run_sync",
    "score_from_completion",
    "score_from_logprobs",
    "score_from_text",
]

MASS_THRESHOLD = 0.25  # trait, vetting, eval_prompt, position
COHERENCE_MASS_THRESHOLD = 0.1  # coherence and its relevance check
LOGPROB_EPSILON = 1e-3  # a log-probability above 0 by more than this is not a rounding error
LOGPROB_FLOOR = -1e4  # below this a log-probability is not one a model reports (OpenAI and vLLM floor at -9999)
PROBABILITY_SLACK = 0.05  # top alternatives whose probabilities sum above 1 + this are not a distribution

RequestKind = Literal["trait", "vetting", "coherence", "eval_prompt", "position"]


@dataclass(frozen=True)
class JudgeRequest:
    """One thing to judge.

    Args:
        kind: ``trait`` (the definition as rubric), ``vetting`` (the first 16 words of a
            completion), ``coherence`` (with a relevance check), ``eval_prompt`` (the trait's own
            prompt from ``steering.json``) or ``position`` (how many leading words carry the trait).
        question: the question or prompt the answer replies to.
        answer: the answer or completion.
        trait_name, definition: the trait (unused for coherence).
        eval_prompt: the template for ``kind="eval_prompt"``.
        keywords: the trait's pole words, for the ``keywords`` backend.

    Build requests with :func:`traitflow.judge.trait_request`, :func:`~traitflow.judge.vetting_request`,
    :func:`~traitflow.judge.coherence_request` and :func:`~traitflow.judge.position_request`.
    """

    kind: RequestKind
    question: str
    answer: str
    trait_name: str = ""
    definition: str = ""
    eval_prompt: str | None = None
    keywords: Keywords | None = None


@dataclass(frozen=True)
class JudgeScore:
    """A judge's answer to one request.

    Attributes:
        score: 0-100 (for ``position``: the estimated number of leading words, 1-16); ``None``
            when the judge gave no confident answer or the request failed.
        mass: probability mass on valid integers (``None`` when read from text, or keywords).
        cached: every model call behind this score was answered from the cache.
    """

    score: float | None
    mass: float | None
    cached: bool = False


@dataclass
class JudgeStats:
    """Cumulative counters of one judge.

    Attributes:
        requests: requests scored.
        calls: model calls actually sent (HTTP requests or local forward passes), retries included.
        cache_hits: model calls answered from the cache instead.
        none_count: scores that came back ``None`` (no confident answer, or an error).
        errors: requests that failed after all retries (they are in ``none_count`` too).
    """

    requests: int = 0
    calls: int = 0
    cache_hits: int = 0
    none_count: int = 0
    errors: int = 0

    @property
    def none_rate(self) -> float:
        """Share of requests whose score is ``None`` (0.0 when nothing was scored)."""
        return self.none_count / self.requests if self.requests else 0.0

    def copy(self) -> "JudgeStats":
        return JudgeStats(**asdict(self))

    def since(self, earlier: "JudgeStats") -> "JudgeStats":
        """The counts added after ``earlier`` (a :meth:`copy` taken before a batch)."""
        return JudgeStats(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, float]:
        """The counters plus ``none_rate``, e.g. for asset metadata."""
        return {**asdict(self), "none_rate": round(self.none_rate, 4)}


@runtime_checkable
class Judge(Protocol):
    """What every backend offers.

    Example:
        >>> judge = make_judge(JudgeSpec(model="keywords"), cache_path=None)
        >>> [s.score for s in judge.score([coherence_request("Hi?", "Hello, how are you?")])]
        [100.0]
    """

    model: str
    stats: JudgeStats

    def score(self, requests: list[JudgeRequest]) -> list[JudgeScore]:
        """Score ``requests`` (concurrently where the backend allows), in order."""
        ...

    def check(self) -> None:
        """Check the configuration (model string, API keys) now instead of on the first score."""
        ...

    def close(self) -> None:
        """Release the cache file (and a local judge's registration)."""
        ...


# --------------------------------------------------------------------------- reading a reply
@dataclass(frozen=True)
class Completion:
    """The part of a judge model's reply that scoring needs.

    Attributes:
        text: the reply text.
        top_logprobs: ``(token, logprob)`` of the first reply token's top alternatives, or
            ``None`` when the provider returned no log-probabilities.
    """

    text: str
    top_logprobs: tuple[tuple[str, float], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "top_logprobs": None if self.top_logprobs is None else [list(t) for t in self.top_logprobs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Completion":
        top = data.get("top_logprobs")
        return cls(text=data.get("text") or "", top_logprobs=None if top is None else tuple((str(t), float(lp)) for t, lp in top))


class MalformedReply(ValueError):
    """A reply that is not a sane chat completion (see the module docstring): a failure, not a judgement."""


def logprob_problem(top_logprobs: Iterable[tuple[str, Any]] | None) -> str | None:
    """Why these ``(token, logprob)`` pairs cannot come from a model, or ``None`` when they can."""
    total = 0.0
    for token, logprob in top_logprobs or ():
        if isinstance(logprob, bool) or not isinstance(logprob, int | float):
            return f"logprob {logprob!r} of token {token!r} is not a number"
        if not math.isfinite(logprob) or logprob > LOGPROB_EPSILON or logprob < LOGPROB_FLOOR:
            return f"logprob {logprob!r} of token {token!r} is impossible"
        total += math.exp(min(logprob, 0.0))
    if total > 1.0 + PROBABILITY_SLACK:
        return f"top logprobs sum to probability {total:.3g} > 1"
    return None


_INTEGER_TOKEN = re.compile(r"[0-9]+")
_NUMBER_IN_TEXT = re.compile(r"(?<![0-9.])-?[0-9]+(?:\.[0-9]+)?")


def score_from_logprobs(
    top_logprobs: tuple[tuple[str, float], ...] | list[tuple[str, float]], low: int, high: int, threshold: float
) -> tuple[float | None, float]:
    """``(score, mass)``: the probability-weighted mean of the integer tokens in ``[low, high]``.

    A token counts when, stripped of whitespace, it is an ASCII integer in range. ``score`` is
    ``None`` when ``mass`` (their summed probability) is below ``threshold``. Impossible
    log-probabilities (see :func:`logprob_problem`) never count: replies holding them are
    rejected before they get here, and this keeps old or hand-made values from overflowing.
    """
    mass = 0.0
    weighted = 0.0
    for token, logprob in top_logprobs:
        text = token.strip()
        if not _INTEGER_TOKEN.fullmatch(text):
            continue
        value = int(text)
        if value < low or value > high or logprob_problem([(token, logprob)]) is not None:
            continue
        p = math.exp(min(logprob, 0.0))
        mass += p
        weighted += p * value
    if mass <= 0.0 or mass < threshold:
        return None, mass
    return weighted / mass, min(mass, 1.0)


def score_from_text(text: str, low: int, high: int) -> float | None:
    """The first number in ``text`` when it lies in ``[low, high]``, else ``None``."""
    match = _NUMBER_IN_TEXT.search(text or "")
    if match is None:
        return None
    value = float(match.group(0))
    return value if low <= value <= high else None


def score_from_completion(completion: Completion, low: int, high: int, threshold: float) -> tuple[float | None, float | None]:
    """``(score, mass)`` from log-probabilities when present, else from the text (mass ``None``)."""
    if completion.top_logprobs:
        return score_from_logprobs(completion.top_logprobs, low, high, threshold)
    return score_from_text(completion.text, low, high), None


# --------------------------------------------------------------------------- secrets and endpoints
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|key|sess)-[A-Za-z0-9_\-]{6,}")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_USERINFO_IN_TEXT = re.compile(r"(?<![\w/@:.])[^\s/@:'\"<>`]+:[^\s/@'\"<>`]+@(?=[\w\[])")
_TRAILING = ".,;:!?)]}'\""
MASK = "***"


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return parts if parts.scheme and parts.netloc else None


def _host_port(parts: SplitResult) -> str:
    netloc = parts.netloc.rsplit("@", 1)[-1]
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a port that is not a number: keep what was written, minus userinfo
        return netloc
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


def redact_url(url: str | None) -> str:
    """``url`` with its userinfo and every query value masked and its fragment dropped.

    Example:
        >>> redact_url("https://bob:hunter2@proxy.example/v1?key=abc&region=eu#x")
        'https://***@proxy.example/v1?key=***&region=***'
    """
    if not url:
        return ""
    parts = _split(url)
    if parts is None:  # not an absolute URL: mask what looks like userinfo, drop query and fragment
        text = re.split(r"[?#]", url.strip(), maxsplit=1)[0]
        return _USERINFO_IN_TEXT.sub(MASK + "@", text)
    netloc = _host_port(parts)
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    query = "&".join(f"{pair.split('=', 1)[0]}={MASK}" if "=" in pair else MASK for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def endpoint_identity(url: str | None) -> str:
    """The endpoint ``url`` names, without userinfo, query string or fragment (never a secret):
    scheme and host lower-cased, no trailing slash. ``""`` for none.

    Example:
        >>> endpoint_identity("HTTP://bob:pw@LocalHost:8000/v1/?key=abc")
        'http://localhost:8000/v1'
    """
    if not url:
        return ""
    parts = _split(url)
    if parts is None:
        return redact_url(url).replace(MASK + "@", "").rstrip("/")
    return urlunsplit((parts.scheme.lower(), _host_port(parts).lower(), parts.path.rstrip("/"), "", ""))


def url_secrets(url: str | None) -> list[str]:
    """The secret parts of ``url`` (user, password, query values; 4 characters or more), longest first."""
    parts = _split(url or "")
    if parts is None:
        return []
    found = [parts.username or "", parts.password or ""]
    found += [pair.split("=", 1)[1] for pair in parts.query.split("&") if "=" in pair]
    found.append(parts.fragment)
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def _redact_url_match(match: re.Match) -> str:
    text = match.group(0)
    stripped = text.rstrip(_TRAILING)
    return redact_url(stripped) + text[len(stripped) :]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secrets masked: the values of secret-looking environment variables,
    key-like strings (``sk-…``), URL userinfo and query values (``http://***@host/?key=***``),
    and each of ``secrets``.

    Example:
        >>> redact("GET http://u:pw@h/v1?token=abc failed for sk-proj-abcdef123456")
        'GET http://***@h/v1?token=*** failed for sk-***'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRET_NAME.search(name):
            text = text.replace(value, MASK)
    return _KEY_LIKE.sub(lambda m: m.group(1) + "-" + MASK, redact_urls(text))


def redact_urls(text: str) -> str:
    """``text`` with the userinfo and query values of every URL in it masked (nothing else)."""
    text = _URL_IN_TEXT.sub(_redact_url_match, text)
    return _USERINFO_IN_TEXT.sub(MASK + "@", text)


# --------------------------------------------------------------------------- one event loop for all judges
class _LoopThread:
    """A daemon thread running one asyncio loop: async clients (litellm's) stay bound to one loop."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="traitflow-judge-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_LOOP: _LoopThread | None = None
_LOOP_LOCK = threading.Lock()


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the judges' background event loop and wait for its result.

    Works from plain code, from threads, and from inside a running event loop (a notebook);
    the coroutine is cancelled if the caller is interrupted.
    """
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.pid != os.getpid() or not _LOOP.thread.is_alive():
            _LOOP = _LoopThread()
        runner = _LOOP
    if threading.current_thread() is runner.thread:
        coro.close()
        raise RuntimeError("Judge.score() called from inside the judge loop; await the async method instead")
    future = asyncio.run_coroutine_threadsafe(coro, runner.loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
