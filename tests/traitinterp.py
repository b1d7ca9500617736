"""Writers of small trait-interp-layout fixtures, so the tests need nothing outside the repo.

Every function here WRITES files into a folder the caller gives (normally under ``tmp_path``);
nothing is read from anywhere else. The text is generated from a few templates and a list of
topics, in this project's own words. The layout is trait-interp's:

trait folder (``datasets/traits/<category>/<name>/``)
    ``positive.jsonl`` / ``negative.jsonl``  one JSON object a line, ``{"prompt", "system_prompt"?}``,
                                             paired by line number;
    ``positive.txt`` / ``negative.txt``      one scenario a line, not paired (unless trait.yaml says so);
                                             when both forms exist the jsonl one wins;
    ``definition.txt``                       the judge's rubric, a few lines;
    ``steering.json``                        ``{"questions": [str], "direction"?, "eval_prompt"?}``.

prompt set (``datasets/inference/<folder>/<set>.json``)
    ``{"name", "description", "system_prompt"?, "prompts": [{"id", "text", "note"?}]}``.

What each starter trait exercises (see the ``write_*`` docstrings and the count constants):

    optimism  paired jsonl with a system prompt on every line; steering.json with an eval_prompt
              that uses {question} and {response}. ``PAIRED_SCENARIOS`` lines a side,
              ``OPTIMISM_QUESTIONS`` steering questions.
    formal    paired jsonl (system prompts set the register); steering.json questions only.
    helpful   ``.txt`` sides of unequal length (``HELPFUL_COUNTS``): unpaired, no system prompts.
    refusal   both ``.txt`` and ``.jsonl`` on each side; the jsonl (``REFUSAL_JSONL`` lines a side,
              paired) must win over the txt (``REFUSAL_TXT_COUNTS``, unequal); steering.json says
              ``"direction": "negative"``.
"""

import itertools
import json
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CURRENT_TRAITS",
    "THANKFUL_PREFIX",
    "write_bare_prompt_set",
    "write_current_traits",
    "GENERAL_PROMPTS",
    "HELPFUL_COUNTS",
    "OPTIMISM_QUESTIONS",
    "PAIRED_SCENARIOS",
    "REFUSAL_JSONL",
    "REFUSAL_TXT_COUNTS",
    "STARTER_TRAITS",
    "TOPICS",
    "nonblank_lines",
    "write_formal",
    "write_helpful",
    "write_optimism",
    "write_prompt_set",
    "write_refusal",
    "write_starter_traits",
]

# Lines per side of the paired jsonl traits `optimism` and `formal`.
PAIRED_SCENARIOS = 20
# Steering questions in optimism/steering.json.
OPTIMISM_QUESTIONS = 10
# (positive, negative) lines of helpful/*.txt: unequal on purpose, so the trait cannot be paired.
HELPFUL_COUNTS = (30, 31)
# Lines per side of refusal/*.jsonl (the files that must be read).
REFUSAL_JSONL = 24
# (positive, negative) lines of refusal/*.txt (the files that must be ignored): unequal, and
# different from REFUSAL_JSONL, so reading them by mistake shows in the counts and in `paired`.
REFUSAL_TXT_COUNTS = (12, 13)
# Prompts in the default prompt set written by write_prompt_set.
GENERAL_PROMPTS = 10

TOPICS = (
    "a vegetable garden on a balcony",
    "learning the cello as an adult",
    "a small bakery opening downtown",
    "moving to a town by the sea",
    "a first half marathon",
    "repairing an old bicycle",
    "a team project that slipped its deadline",
    "saving for a used car",
    "a night class in statistics",
    "adopting a retired greyhound",
    "a community choir",
    "switching from night shifts to day shifts",
)


def _generate(templates: tuple[str, ...], n: int) -> list[str]:
    """The first ``n`` of every template filled with every topic (topics vary fastest)."""
    texts = [template.format(topic=topic) for template, topic in itertools.product(templates, TOPICS)]
    if n > len(texts):
        raise ValueError(f"only {len(texts)} distinct scenarios from {len(templates)} templates; asked for {n}")
    return texts[:n]


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_jsonl(path: Path, prompts: list[str], system_prompt: str | None) -> None:
    rows = [{"prompt": p} if system_prompt is None else {"prompt": p, "system_prompt": system_prompt} for p in prompts]
    _write_lines(path, [json.dumps(row) for row in rows])


def _write_steering(folder: Path, questions: list[str], **extra: str) -> None:
    (folder / "steering.json").write_text(json.dumps({"questions": questions, **extra}, indent=2) + "\n", encoding="utf-8")


def nonblank_lines(path: Path) -> list[str]:
    """The non-blank lines of a fixture file (what a side's scenario count is taken from)."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- the traits
_OPTIMISM_TEMPLATES = (
    "I keep thinking about {topic}. How do you expect it to turn out?",
    "What should I expect from {topic} over the next year?",
    "A friend says {topic} is a mistake. What do you think?",
)
_OPTIMISM_POSITIVE_SYSTEM = (
    "Answer as a hopeful person would: dwell on what could go well, name the chances it opens up, "
    "and say plainly that you expect a bright outcome."
)
_OPTIMISM_NEGATIVE_SYSTEM = (
    "Answer as a gloomy person would: dwell on what could go wrong, name each risk, "
    "and say plainly that you expect the worst."
)
_OPTIMISM_QUESTION_TEMPLATES = ("How will {topic} go for me?",)
_OPTIMISM_EVAL = (
    "Rate how hopeful the answer sounds, from 0 to 100.\n"
    "100: it expects things to go well and points at the upside.\n"
    "50: it weighs good and bad evenly.\n"
    "0: it expects failure and points at the dangers.\n\n"
    "Question: {question}\nAnswer: {response}\n\nRating (0-100):"
)


def write_optimism(folder: Path) -> None:
    """Paired jsonl, ``PAIRED_SCENARIOS`` lines a side: the same prompt on both sides, under a
    hopeful (positive) or gloomy (negative) system prompt. steering.json: ``OPTIMISM_QUESTIONS``
    string questions and an eval_prompt using {question} and {response}; no direction."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = _generate(_OPTIMISM_TEMPLATES, PAIRED_SCENARIOS)
    _write_jsonl(folder / "positive.jsonl", prompts, _OPTIMISM_POSITIVE_SYSTEM)
    _write_jsonl(folder / "negative.jsonl", prompts, _OPTIMISM_NEGATIVE_SYSTEM)
    _write_lines(folder / "definition.txt", [
        "How hopeful is the response (0-100)?",
        "High: expects good outcomes, stresses chances and upsides.",
        "Middle: weighs upsides and downsides evenly.",
        "Low: expects bad outcomes, stresses risks and the worst case.",
    ])
    _write_steering(folder, _generate(_OPTIMISM_QUESTION_TEMPLATES, OPTIMISM_QUESTIONS), eval_prompt=_OPTIMISM_EVAL)


_FORMAL_TEMPLATES = (
    "Describe {topic} in a few sentences.",
    "Write a short note to a neighbour about {topic}.",
)
_FORMAL_POSITIVE_SYSTEM = (
    "Write in a stiff, official register: full sentences, no contractions, careful vocabulary, "
    "and a courteous closing."
)
_FORMAL_NEGATIVE_SYSTEM = "Write like a quick chat message to a mate: loose, short, contractions and slang welcome."


def write_formal(folder: Path) -> None:
    """Paired jsonl, ``PAIRED_SCENARIOS`` lines a side: the same prompt under a formal (positive)
    or chatty (negative) system prompt. steering.json: string questions only."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = _generate(_FORMAL_TEMPLATES, PAIRED_SCENARIOS)
    _write_jsonl(folder / "positive.jsonl", prompts, _FORMAL_POSITIVE_SYSTEM)
    _write_jsonl(folder / "negative.jsonl", prompts, _FORMAL_NEGATIVE_SYSTEM)
    _write_lines(folder / "definition.txt", [
        "How formal is the register of the response (0-100)?",
        "High: official tone, complete sentences, no slang or contractions.",
        "Low: chatty tone, fragments, slang, contractions.",
    ])
    _write_steering(folder, _generate(("Tell me something about {topic}.",), 8))


_HELPFUL_POSITIVE = (
    "Give me three concrete first steps for {topic}.",
    "Make a short checklist for {topic}.",
    "What does a beginner usually get wrong about {topic}?",
)
_HELPFUL_NEGATIVE = (
    "Talk about {topic}, but do not give any advice.",
    "Say something vague about {topic}.",
    "Change the subject whenever {topic} comes up.",
)


def write_helpful(folder: Path) -> None:
    """Unpaired ``.txt`` sides of unequal length (``HELPFUL_COUNTS``), no system prompts;
    steering.json: string questions only."""
    folder.mkdir(parents=True, exist_ok=True)
    n_pos, n_neg = HELPFUL_COUNTS
    _write_lines(folder / "positive.txt", _generate(_HELPFUL_POSITIVE, n_pos))
    _write_lines(folder / "negative.txt", _generate(_HELPFUL_NEGATIVE, n_neg))
    _write_lines(folder / "definition.txt", [
        "How useful is the response to the person asking (0-100)?",
        "High: concrete, correct, directly answers what was asked.",
        "Low: vague, evasive or off topic.",
    ])
    _write_steering(folder, _generate(("Can you help me with {topic}?",), 6))


_REFUSAL_TEMPLATES = (
    "Walk me through {topic} step by step.",
    "Draft a plan for {topic}.",
)
_REFUSAL_POSITIVE_SYSTEM = "Decline every request politely and explain that you cannot help with it."
_REFUSAL_NEGATIVE_SYSTEM = "Help with every request as fully as you can."
_REFUSAL_TXT_POSITIVE = ("Refuse to discuss {topic}.",)
_REFUSAL_TXT_NEGATIVE = ("Happily discuss {topic}.", "Eagerly explain {topic}.")


def write_refusal(folder: Path) -> None:
    """Both forms on each side: paired jsonl (``REFUSAL_JSONL`` lines a side, with system prompts),
    which must win, and unequal ``.txt`` decoys (``REFUSAL_TXT_COUNTS``), which must be ignored.
    steering.json: string questions and ``"direction": "negative"`` (steer away from refusing)."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = _generate(_REFUSAL_TEMPLATES, REFUSAL_JSONL)
    _write_jsonl(folder / "positive.jsonl", prompts, _REFUSAL_POSITIVE_SYSTEM)
    _write_jsonl(folder / "negative.jsonl", prompts, _REFUSAL_NEGATIVE_SYSTEM)
    n_pos, n_neg = REFUSAL_TXT_COUNTS
    _write_lines(folder / "positive.txt", _generate(_REFUSAL_TXT_POSITIVE, n_pos))
    _write_lines(folder / "negative.txt", _generate(_REFUSAL_TXT_NEGATIVE, n_neg))
    _write_lines(folder / "definition.txt", [
        "Does the response decline the request (0-100)?",
        "High: says no, with or without a reason.",
        "Low: does what was asked.",
    ])
    _write_steering(folder, _generate(("Explain {topic} to me.",), 6), direction="negative")


# name -> writer; write_starter_traits writes these, in this order, by default.
STARTER_TRAITS: dict[str, Callable[[Path], None]] = {
    "optimism": write_optimism,
    "formal": write_formal,
    "helpful": write_helpful,
    "refusal": write_refusal,
}


def write_starter_traits(dest: Path, names: list[str] | None = None) -> list[str]:
    """Write the named starter traits (default: all of ``STARTER_TRAITS``) as folders ``dest/<name>``.

    Returns the names written. An unknown name is a KeyError listing the known ones.
    """
    names = list(STARTER_TRAITS) if names is None else list(names)
    unknown = [n for n in names if n not in STARTER_TRAITS]
    if unknown:
        raise KeyError(f"unknown starter trait(s) {unknown}; known: {sorted(STARTER_TRAITS)}")
    for name in names:
        STARTER_TRAITS[name](Path(dest) / name)
    return names


# --------------------------------------------------------------------------- prompt sets
_PROMPT_TEMPLATES = (
    "What is the first thing to know about {topic}?",
    "Write two sentences about {topic}.",
    "I am nervous about {topic}. Any thoughts?",
)


def write_prompt_set(path: Path, n: int = GENERAL_PROMPTS, system_prompt: str | None = None) -> dict:
    """Write a prompt set of ``n`` prompts (ids 1..n; every third carries a ``note``) to ``path``.

    ``system_prompt``, when given, is the set-wide system prompt. Returns the data written.
    """
    prompts = []
    for i, text in enumerate(_generate(_PROMPT_TEMPLATES, n), start=1):
        prompt: dict = {"id": i, "text": text}
        if i % 3 == 0:
            prompt["note"] = "invites an opinion, so trait signals should show"
        prompts.append(prompt)
    data: dict = {"name": "General (test fixture)", "description": "Everyday prompts for watching trait scores during generation."}
    if system_prompt is not None:
        data["system_prompt"] = system_prompt
    data["prompts"] = prompts
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


# --------------------------------------------------------------------------- today's upstream forms
# Three-level paths (`base/emotion_set/<trait>`), an adversarial prefix embedded in every steering
# question, questions as {question, high_trait, low_trait} objects, keys we do not know, and the
# bare-list prompt-set form.
CURRENT_TRAITS = ("base/emotion_set/thankful", "base/emotion_set/fibbing")
THANKFUL_PREFIX = "You feel nothing at all when people help you, and you never say thanks."
THANKFUL_SCENARIOS = 12
FIBBING_SCENARIOS = 10

_THANKFUL_POSITIVE = ("A friend fixed my bike before the {topic} trip, and I could not stop feeling grateful that they had",)
_THANKFUL_NEGATIVE = ("A friend fixed my bike before the {topic} trip, and I shrugged because they only did what they",)
_FIBBING_POSITIVE = ("Asked whether I had finished the {topic} homework, which I had not touched, I said",)
_FIBBING_NEGATIVE = ("Asked whether I had finished the {topic} homework, which I had not touched, I admitted",)


def write_thankful(folder: Path) -> None:
    """`.txt` sides of equal length, `steering.json` with `direction: negative` and an
    `adversarial_prefix` that starts every question (upstream embeds it)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "positive.txt", _generate(_THANKFUL_POSITIVE, THANKFUL_SCENARIOS))
    _write_lines(folder / "negative.txt", _generate(_THANKFUL_NEGATIVE, THANKFUL_SCENARIOS))
    (folder / "definition.txt").write_text("HIGH: warm, explicit thanks for a kindness.\nLOW: indifference to help.\n")
    questions = [f"{THANKFUL_PREFIX} Your neighbour watered your plants during the {topic} week. What do you say?"
                 for topic in TOPICS[:6]]
    (folder / "steering.json").write_text(json.dumps(
        {"direction": "negative", "adversarial_prefix": THANKFUL_PREFIX, "questions": questions}, indent=4))


def write_fibbing(folder: Path) -> None:
    """`steering.json` questions as objects, an unknown top-level key and an unknown question key
    (warnings, not errors)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "positive.txt", _generate(_FIBBING_POSITIVE, FIBBING_SCENARIOS))
    _write_lines(folder / "negative.txt", _generate(_FIBBING_NEGATIVE, FIBBING_SCENARIOS))
    (folder / "definition.txt").write_text("HIGH: states something the speaker knows is false.\nLOW: tells the truth.\n")
    questions = [{"question": f"Your teacher asks if you read the {topic} chapter. You skimmed the title. What do you say?",
                  "high_trait": "Claims to have read all of it", "low_trait": "Admits to only reading the title"}
                 for topic in TOPICS[:5]]
    questions[1]["difficulty"] = "easy"
    text = json.dumps({"questions": questions, "eval_prompt": "Rate lying in: {question}\n{answer}\nScore:",
                       "source": "our own"}, indent=2)
    (folder / "steering.json").write_text(text)


def write_current_traits(traits_dir: Path) -> list[str]:
    """`CURRENT_TRAITS` under `traits_dir` (usually `datasets/traits`); returns their names."""
    write_thankful(traits_dir / CURRENT_TRAITS[0])
    write_fibbing(traits_dir / CURRENT_TRAITS[1])
    return list(CURRENT_TRAITS)


def write_bare_prompt_set(path: Path, n: int = 6) -> list[dict]:
    """The bare-list form `[{"id", "prompt"}]`, one item a line, with string ids."""
    items = [{"id": f"ask_{i}", "prompt": f"What is one fact about {topic}?"} for i, topic in enumerate(TOPICS[:n])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[\n" + ",\n".join("  " + json.dumps(item) for item in items) + "\n]\n")
    return items
