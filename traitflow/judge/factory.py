"""Choose a judge backend from a :class:`~traitflow.specs.models.JudgeSpec`.

``judge:`` in an experiment picks the backend; a trait's ``trait.yaml`` may pick another of the
experiment's ``judges:`` by name (:func:`judge_spec_for`), never an endpoint of its own:

- ``keywords``: :class:`KeywordsBackend`, the toy judge (no model, no network, no cache).
- ``local:<variant>``: :class:`~traitflow.judge.local.LocalJudge`, a variant of the experiment.
- anything else: a litellm model string, :class:`~traitflow.judge.llm.LiteLLMJudge`.

Example:
    >>> judge = make_judge(JudgeSpec(model="openai/gpt-4.1-mini"), cache_path=root / "judge_cache.sqlite")
    >>> scores = judge.score([trait_request(trait, q, a) for q, a in pairs])
    >>> judge.stats.none_rate
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitflow.data.traits import TraitDataset
from traitflow.errors import TraitflowError
from traitflow.judge.base import Judge, JudgeRequest, JudgeScore, JudgeStats
from traitflow.judge.keywords import KeywordJudge, count_keywords, words
from traitflow.judge.prompts import VETTING_WORDS
from traitflow.specs.models import ExperimentSpec, JudgeSpec, Keywords

__all__ = ["KeywordsBackend", "first_pole_word", "judge_spec_for", "make_judge"]


def judge_spec_for(experiment: "ExperimentSpec", trait: TraitDataset) -> JudgeSpec:
    """The judge for ``trait``: the experiment's judge its ``trait.yaml`` names (``judge: <name>``
    from the experiment's ``judges:``), else the experiment's ``judge``. Validation has checked the name."""
    return experiment.judges[trait.config.judge] if trait.config.judge else experiment.judge


class KeywordsBackend:
    """The ``keywords`` judge behind the :class:`~traitflow.judge.base.Judge` interface.

    ``trait``, ``vetting`` and ``eval_prompt`` requests score the answer by pole-word rates
    (:meth:`KeywordJudge.score_trait`); ``coherence`` by well-formedness
    (:meth:`KeywordJudge.coherence`); ``position`` is the number of leading words up to and
    including the first pole word (1-16; ``None`` when none of the first 16 words is one).
    Scores are instant and deterministic, so nothing is cached (``stats.cache_hits`` and
    ``stats.calls`` stay 0); ``mass`` is always ``None``.
    """

    model = "keywords"

    def __init__(self, spec: JudgeSpec | None = None):
        self.spec = spec or JudgeSpec(model="keywords")
        self.stats = JudgeStats()
        self._judge = KeywordJudge()

    def _keywords(self, request: JudgeRequest) -> Keywords:
        keywords = request.keywords
        if keywords is None or not (keywords.positive or keywords.negative):
            where = f"datasets/traits/{request.trait_name}/trait.yaml" if request.trait_name else "the trait's trait.yaml"
            raise TraitflowError(
                f"{where}: keywords: the keywords judge needs positive and negative word lists there "
                "(or choose another judge with `judge:`)"
            )
        return keywords

    def _one(self, request: JudgeRequest) -> float | None:
        if request.kind == "coherence":
            return self._judge.coherence(request.question, request.answer)
        keywords = self._keywords(request)
        if request.kind == "position":
            return first_pole_word(request.answer, keywords.positive + keywords.negative)
        if request.kind in ("trait", "vetting", "eval_prompt"):
            return self._judge.score_trait(request.answer, keywords.positive, keywords.negative)
        raise ValueError(f"unknown JudgeRequest kind {request.kind!r}")

    def score(self, requests: list[JudgeRequest]) -> list[JudgeScore]:
        scores = [JudgeScore(self._one(r), None, cached=False) for r in requests]
        self.stats.requests += len(scores)
        self.stats.none_count += sum(1 for s in scores if s.score is None)
        return scores

    def check(self) -> None:
        """Nothing to check: the keywords judge needs no model, key or server."""

    def close(self) -> None:
        pass


def first_pole_word(answer: str, keywords: list[str], limit: int = VETTING_WORDS) -> float | None:
    """Leading words of ``answer`` up to and including the first keyword match (1..limit), else None."""
    chunks = answer.split()[:limit]
    for i in range(len(chunks)):
        if count_keywords(words(" ".join(chunks[: i + 1])), keywords) > 0:
            return float(i + 1)
    return None


def make_judge(spec: JudgeSpec, cache_path: Path | None, load_variant: Callable[[str], Any] | None = None) -> Judge:
    """The judge that ``spec`` describes.

    Args:
        spec: ``judge:`` of the experiment (or of the trait, see :func:`judge_spec_for`).
        cache_path: the SQLite cache file (created on first use), or None for no cache.
        load_variant: ``variant name -> LoadedModel``, needed for ``local:<variant>``.

    Nothing is imported or contacted here: litellm is imported, and the model string and API
    keys are checked, when a call first misses the cache (or on an explicit ``judge.check()``),
    so a fully cached re-score needs neither litellm nor a key.

    Raises:
        TraitflowError: ``local:`` without a variant name or without ``load_variant``.
    """
    model = spec.model.strip()
    if model == "keywords":
        return KeywordsBackend(spec)
    from traitflow.judge.cache import JudgeCache

    if model.startswith("local:"):
        variant = model.split(":", 1)[1].strip()
        if not variant:
            raise TraitflowError("judge model 'local:' needs a variant name, e.g. local:chat")
        if load_variant is None:
            raise TraitflowError(f"judge {model}: a local judge needs the experiment's model variants (no loader given)")
        from traitflow.judge.local import LocalJudge

        return LocalJudge(spec, JudgeCache(cache_path) if cache_path else None, variant, load_variant)
    if not model:
        raise TraitflowError("judge model is empty; expected keywords, local:<variant> or a litellm model string")
    from traitflow.judge.llm import LiteLLMJudge

    return LiteLLMJudge(spec, JudgeCache(cache_path) if cache_path else None)
