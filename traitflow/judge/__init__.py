"""Judges: score answers for a trait (0-100), for coherence (0-100), and where a trait shows.

One interface (:class:`Judge`: ``judge.score(requests) -> scores``, ``judge.stats``) over
several backends, chosen by ``judge:`` in the experiment (overridable per trait):

- a litellm model string (``openai/gpt-4.1-mini``, ``anthropic/…``, ``ollama/…``,
  ``hosted_vllm/…``) with an optional ``api_base``; keys from the environment
  (:mod:`traitflow.judge.llm`);
- ``local:<variant>``: a model variant of the experiment (:mod:`traitflow.judge.local`);
- ``keywords``: pole-word rates and well-formedness, no model (:mod:`traitflow.judge.keywords`).

Model scores are probability-weighted means over the first reply token's top-20
log-probabilities (:mod:`traitflow.judge.base`), the prompts are in :mod:`traitflow.judge.prompts`,
and replies are cached in SQLite (:mod:`traitflow.judge.cache`), keyed by the endpoint too.

A batch that fails (every request, more than ``max_failure_rate`` of them, or past
``deadline_s``) raises a one-line :class:`~traitflow.errors.TraitflowError`; the rule is in
:mod:`traitflow.judge.llm`. URL secrets never reach a message, a log or the cache: anything that
writes an endpoint passes it through :func:`redact_url` (free text through :func:`redact`).

Example:
    >>> from traitflow.judge import make_judge, trait_request, coherence_request
    >>> judge = make_judge(experiment.judge, cache_path=root / "judge_cache.sqlite")
    >>> scores = judge.score([trait_request(trait, q, a) for q, a in pairs])
    >>> judge.stats.none_rate   # show it; never average the None scores away

Nothing here imports litellm, torch or Dagster at import time.
"""

from traitflow.judge.base import (
    COHERENCE_MASS_THRESHOLD,
    MASS_THRESHOLD,
    Completion,
    Judge,
    JudgeRequest,
    JudgeScore,
    JudgeStats,
    MalformedReply,
    endpoint_identity,
    redact,
    redact_url,
    score_from_logprobs,
    score_from_text,
)
from traitflow.judge.cache import JudgeCache, cache_key
from traitflow.judge.factory import KeywordsBackend, judge_spec_for, make_judge
from traitflow.judge.keywords import KeywordJudge
from traitflow.judge.prompts import (
    VETTING_WORDS,
    coherence_request,
    first_words,
    position_request,
    trait_request,
    vetting_request,
)

__all__ = [
    "COHERENCE_MASS_THRESHOLD",
    "MASS_THRESHOLD",
    "VETTING_WORDS",
    "Completion",
    "Judge",
    "JudgeCache",
    "JudgeRequest",
    "JudgeScore",
    "JudgeStats",
    "KeywordJudge",
    "KeywordsBackend",
    "MalformedReply",
    "cache_key",
    "coherence_request",
    "endpoint_identity",
    "first_words",
    "judge_spec_for",
    "make_judge",
    "position_request",
    "redact",
    "redact_url",
    "score_from_logprobs",
    "score_from_text",
    "trait_request",
    "vetting_request",
]
