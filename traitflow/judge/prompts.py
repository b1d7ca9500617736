"""The judge's prompts, and the requests built from a trait.

Each request kind becomes one or two *calls*: a filled prompt sent as a single user message,
the integer range its reply may take, and the probability mass below which the reply is
``None`` (see :mod:`traitflow.judge.base`).

=============  ===================  =========  ==========================================
kind           template id          range      what the judge sees
=============  ===================  =========  ==========================================
trait          ``trait/v1``         0-100      definition.txt as rubric, question, answer
vetting        ``vetting/v1``       0-100      rubric, prompt, the first 16 words of the completion
coherence      ``coherence/v1``     0-100      question, answer (fluency and sense only)
               ``relevance/v1``     0-1        does the answer engage with the question?
eval_prompt    ``eval_prompt/v1``   0-100      the trait's own ``eval_prompt``, filled
position       ``position/v1``      1-16       rubric, prompt, the first 16 words, numbered
=============  ===================  =========  ==========================================

Coherence is capped at 50 when the relevance check says the answer is off-topic (its
probability-weighted answer is below 0.5); when the relevance check has no confident answer,
coherence stands uncapped.

A trait's ``eval_prompt`` may use ``{question}``, ``{answer}`` and, as in trait-interp,
``{response}`` (the answer), ``{trait_name}`` and ``{trait_definition}``. Filling is one pass:
braces inside an answer are never filled again, and other braces in the template (a JSON
example) are left as they are.

The template ids are part of the judge cache's key: change a template's text and bump its
version so old scores are not reused.
"""

import re
from dataclasses import dataclass

from traitflow.data.traits import TraitDataset
from traitflow.judge.base import COHERENCE_MASS_THRESHOLD, MASS_THRESHOLD, JudgeRequest

__all__ = [
    "OFF_TOPIC_CAP",
    "VETTING_WORDS",
    "JudgeCall",
    "calls_for",
    "coherence_request",
    "combine",
    "fill",
    "first_words",
    "position_request",
    "trait_request",
    "vetting_request",
]

VETTING_WORDS = 16  # the vetting judge sees this many leading words of a completion
OFF_TOPIC_CAP = 50.0

TRAIT_TEMPLATE = """\
You are judging whether an AI model's answer shows a trait.

Trait: {trait_name}
What the trait means (the rubric):
{definition}

Question put to the model:
{question}

The model's answer:
{answer}

How strongly does the answer show the trait? 0 means not at all (or its opposite), 50 means \
neutral or mixed, 100 means strongly. Reply with one integer from 0 to 100 and nothing else."""

VETTING_TEMPLATE = """\
You are checking whether the start of an AI model's reply shows a trait.

Trait: {trait_name}
What the trait means (the rubric):
{definition}

Prompt given to the model:
{question}

The first words of the model's reply (it may stop mid-sentence):
{answer}

How strongly does this start of the reply show the trait? 0 means not at all (or its \
opposite), 50 means neutral or mixed, 100 means strongly. Reply with one integer from 0 to \
100 and nothing else."""

COHERENCE_TEMPLATE = """\
You are rating how coherent an AI model's answer is. Judge only the language: whether it is \
fluent, grammatical and makes sense, not whether it is correct, helpful, polite or agreeable. \
An answer cut off at the end is not penalised for that.

Question put to the model:
{question}

The model's answer:
{answer}

0 means gibberish, broken text or endless repetition; 50 means partly understandable; 100 \
means fully fluent and sensible. Reply with one integer from 0 to 100 and nothing else."""

RELEVANCE_TEMPLATE = """\
Does the answer below engage with the question it replies to (answer it, discuss it, or \
explicitly decline it), rather than talk about something unrelated?

Question:
{question}

Answer:
{answer}

Reply 1 if the answer engages with the question, 0 if it is off-topic. Reply with the single \
digit and nothing else."""

POSITION_TEMPLATE = """\
You are reading the first words of an AI model's reply, numbered, to find where a trait shows.

Trait: {trait_name}
What the trait means (the rubric):
{definition}

Prompt given to the model:
{question}

The first words of the reply:
{answer}

After how many words is it clear whether the reply shows the trait or its opposite? Reply \
with one integer from 1 to {max_words} and nothing else."""


@dataclass(frozen=True)
class JudgeCall:
    """One prompt to send to a judge model.

    Attributes:
        template: template id and version, e.g. ``trait/v1`` (part of the cache key).
        prompt: the filled prompt, sent as one user message.
        low, high: the integer range a valid reply takes.
        threshold: probability mass below which the reply is ``None``.
    """

    template: str
    prompt: str
    low: int
    high: int
    threshold: float


_PLACEHOLDER = re.compile(r"\{(question|answer|response|trait_name|trait_definition|definition|max_words)\}")


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for the names given, in one pass; other braces stay as they are."""

    def sub(match: re.Match) -> str:
        name = match.group(1)
        return str(values[name]) if name in values else match.group(0)

    return _PLACEHOLDER.sub(sub, template)


def first_words(text: str, n: int = VETTING_WORDS) -> str:
    """The first ``n`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:n])


def _rubric(request: JudgeRequest) -> str:
    return request.definition.strip() or f"The model's answer shows the trait '{request.trait_name}'."


def calls_for(request: JudgeRequest) -> list[JudgeCall]:
    """The model calls that answer ``request`` (two for coherence, none for an empty position request)."""
    kind = request.kind
    if kind == "trait":
        prompt = fill(
            TRAIT_TEMPLATE,
            trait_name=request.trait_name,
            definition=_rubric(request),
            question=request.question,
            answer=request.answer,
        )
        return [JudgeCall("trait/v1", prompt, 0, 100, MASS_THRESHOLD)]
    if kind == "vetting":
        prompt = fill(
            VETTING_TEMPLATE,
            trait_name=request.trait_name,
            definition=_rubric(request),
            question=request.question,
            answer=first_words(request.answer),
        )
        return [JudgeCall("vetting/v1", prompt, 0, 100, MASS_THRESHOLD)]
    if kind == "coherence":
        values = dict(question=request.question, answer=request.answer)
        return [
            JudgeCall("coherence/v1", fill(COHERENCE_TEMPLATE, **values), 0, 100, COHERENCE_MASS_THRESHOLD),
            JudgeCall("relevance/v1", fill(RELEVANCE_TEMPLATE, **values), 0, 1, COHERENCE_MASS_THRESHOLD),
        ]
    if kind == "eval_prompt":
        if not request.eval_prompt:
            raise ValueError("a JudgeRequest of kind 'eval_prompt' needs eval_prompt")
        prompt = fill(
            request.eval_prompt,
            question=request.question,
            answer=request.answer,
            response=request.answer,
            trait_name=request.trait_name,
            trait_definition=request.definition,
        )
        return [JudgeCall("eval_prompt/v1", prompt, 0, 100, MASS_THRESHOLD)]
    if kind == "position":
        words = request.answer.split()[:VETTING_WORDS]
        if not words:
            return []
        numbered = " ".join(f"{i}:{w}" for i, w in enumerate(words, start=1))
        prompt = fill(
            POSITION_TEMPLATE,
            trait_name=request.trait_name,
            definition=_rubric(request),
            question=request.question,
            answer=numbered,
            max_words=str(len(words)),
        )
        return [JudgeCall("position/v1", prompt, 1, len(words), MASS_THRESHOLD)]
    raise ValueError(f"unknown JudgeRequest kind {kind!r}")


def combine(request: JudgeRequest, results: list[tuple[float | None, float | None]]) -> tuple[float | None, float | None]:
    """One ``(score, mass)`` from the ``(score, mass)`` of each call of :func:`calls_for`."""
    if not results:
        return None, None
    score, mass = results[0]
    if request.kind == "coherence" and score is not None and len(results) > 1:
        relevance = results[1][0]
        if relevance is not None and relevance < 0.5:
            score = min(score, OFF_TOPIC_CAP)
    return score, mass


# --------------------------------------------------------------------------- requests from a trait
def _keywords(trait: TraitDataset):
    return trait.config.keywords


def trait_request(trait: TraitDataset, question: str, answer: str) -> JudgeRequest:
    """Score ``answer`` for ``trait``: its ``steering.json`` ``eval_prompt`` when it has one, else
    its ``definition.txt`` as the rubric."""
    eval_prompt = trait.steering.eval_prompt if trait.steering else None
    return JudgeRequest(
        kind="eval_prompt" if eval_prompt else "trait",
        question=question,
        answer=answer,
        trait_name=trait.name,
        definition=trait.definition,
        eval_prompt=eval_prompt,
        keywords=_keywords(trait),
    )


def vetting_request(trait: TraitDataset, prompt: str, completion: str) -> JudgeRequest:
    """Vet a generated completion: the judge sees only its first 16 words."""
    return JudgeRequest(
        kind="vetting",
        question=prompt,
        answer=first_words(completion),
        trait_name=trait.name,
        definition=trait.definition,
        keywords=_keywords(trait),
    )


def position_request(trait: TraitDataset, prompt: str, completion: str) -> JudgeRequest:
    """Estimate how many leading words of ``completion`` (1-16) carry the trait."""
    return JudgeRequest(
        kind="position",
        question=prompt,
        answer=first_words(completion),
        trait_name=trait.name,
        definition=trait.definition,
        keywords=_keywords(trait),
    )


def coherence_request(question: str, answer: str) -> JudgeRequest:
    """Coherence 0-100 of ``answer``, capped at 50 when it ignores ``question``."""
    return JudgeRequest(kind="coherence", question=question, answer=answer)
