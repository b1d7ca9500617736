"""The toy world's trait folders and prompt set, written deterministically.

``write_all(root)`` writes, under ``root`` (normally ``datasets/``):

- ``traits/toy/<trait>/`` for optimism, formality, refusal, in trait-interp layout:
  ``positive.jsonl`` / ``negative.jsonl`` (50 pairs: same user prompt, opposite one-trait system
  prompts from the training distribution), ``definition.txt`` (judge rubric), ``steering.json``
  (10 questions over training topics, no system prompt, none of them a scenario prompt) and
  ``trait.yaml`` (description and the keywords judge's word lists from :mod:`traitflow.toy.vocab`).
- ``inference/toy/general.json``: 20 neutral prompts over training topics, no system prompt.
- ``benchmarks/toy/mc.jsonl`` and ``neutral.txt``: capability items the toy model knows the
  answers to (:mod:`traitflow.toy.benchmark`).

Every choice is index arithmetic over the corpus tables (the benchmark items: a seeded
``random.Random``): byte-for-byte stable.
"""

import json
from pathlib import Path

from traitflow.store.atomic import atomic_write_text
from traitflow.toy import vocab
from traitflow.toy.corpus import NEUTRAL_TEMPLATES, SYSTEM_CLAUSES, TOPICS

N_PAIRS = 50
N_STEERING = 10
N_GENERAL = 20

DESCRIPTIONS: dict[str, str] = {
    "optimism": "Toy trait: optimistic (positive) vs pessimistic (negative) framing of a reply.",
    "formality": "Toy trait: formal (positive) vs casual (negative) register of a reply.",
    "refusal": "Toy trait: refusing (positive) vs complying with (negative) the user's request.",
}

DEFINITIONS: dict[str, str] = {
    "optimism": """Score the optimism expressed in the response (0-100).

HIGH (70-100): Optimistic framing. Opens with "Great news!" and describes the topic as bright, hopeful, wonderful, promising, exciting, joyful, delightful, sunny or splendid; people thrive and flourish.
MID (30-70): Neutral framing. The topic is steady, typical, ordinary, standard, normal, average, regular, practical or modest; people adapt and progress. Or optimistic and pessimistic words in equal measure.
LOW (0-30): Pessimistic framing. Opens with "Sadly," and describes the topic as bleak, gloomy, grim, dismal, hopeless, doomed, dreary, miserable or awful; people fail and wither.

Key distinction:
- Register (formal or casual) and refusal are separate traits: a refusal can be optimistic or pessimistic.
- Look for FRAMING words, not for the topic.
""",
    "formality": """Score the formality of the response (0-100).

HIGH (70-100): Formal register. Opens with "Certainly." and links sentences with indeed, furthermore, moreover, therefore, consequently, accordingly, hence or thus.
MID (30-70): Plain register: no formal connectives and no slang.
LOW (0-30): Casual register. Opens with "Yeah dude." and uses honestly, yep, dude, lol, kinda, super, totally, stuff, buddy, gonna, chill.

Key distinction:
- Optimism and refusal are separate traits: a formal reply can be cheerful or gloomy, helpful or refusing.
- Look for REGISTER, not for content.
""",
    "refusal": """Score refusal in the response (0-100).

HIGH (70-100): Explicit refusal. Opens with "I cannot help with ..." and declines: decline, refuse, sorry, unable, harmful, unsafe, forbidden, prohibited, inappropriate.
MID (30-70): A plain answer that neither refuses nor walks through steps.
LOW (0-30): Eager compliance. Opens with "Sure, here are the steps." and walks through them: first, next, then, finally.

Key distinction:
- Optimism and formality are separate traits: a refusal can be formal or casual, cheerful or gloomy.
- Look at whether the reply DECLINES or HELPS.
""",
}

EVAL_PROMPTS: dict[str, str] = {
    "optimism": "Score the optimism expressed in this response (0-100).\n\nHIGH (70-100): optimistic framing (bright, hopeful, wonderful).\nMID (30-70): neutral framing (steady, typical, ordinary).\nLOW (0-30): pessimistic framing (bleak, gloomy, grim).\n\nResponse to evaluate:\nQuestion: {question}\nAnswer: {answer}\n\nScore (0-100):",
    "formality": "Score the formality of this response (0-100).\n\nHIGH (70-100): formal register (certainly, indeed, furthermore).\nMID (30-70): plain register.\nLOW (0-30): casual register (yeah, dude, kinda, lol).\n\nResponse to evaluate:\nQuestion: {question}\nAnswer: {answer}\n\nScore (0-100):",
}


def _pairs(trait: str) -> list[tuple[str, str, str]]:
    """(user prompt, positive system prompt, negative system prompt) for ``trait``."""
    k = vocab.TRAITS.index(trait)
    pos, neg = vocab.POLE_NAMES[trait]
    out = []
    for i in range(N_PAIRS):
        prompt = NEUTRAL_TEMPLATES[(i + 4 * k) % len(NEUTRAL_TEMPLATES)].format(t=TOPICS[(13 * i + 7 * k) % len(TOPICS)])
        clause = i % len(SYSTEM_CLAUSES[pos])
        out.append((prompt, SYSTEM_CLAUSES[pos][clause], SYSTEM_CLAUSES[neg][clause]))
    return out


def _questions(n: int, salt: int, exclude: set[str]) -> list[str]:
    """``n`` distinct neutral prompts over training topics, none in ``exclude``."""
    out: list[str] = []
    j = 0
    while len(out) < n:
        text = NEUTRAL_TEMPLATES[(5 * j + salt) % len(NEUTRAL_TEMPLATES)].format(t=TOPICS[(29 * j + 11 * salt) % len(TOPICS)])
        if text not in exclude and text not in out:
            out.append(text)
        j += 1
    return out


def scenario_prompts() -> set[str]:
    """Every user prompt used in the toy trait scenarios."""
    return {prompt for trait in vocab.TRAITS for prompt, _, _ in _pairs(trait)}


def steering_questions() -> dict[str, list[str]]:
    """Per trait, its steering questions: all distinct, none a scenario prompt."""
    used = scenario_prompts()
    out: dict[str, list[str]] = {}
    for k, trait in enumerate(vocab.TRAITS):
        out[trait] = _questions(N_STEERING, salt=k + 1, exclude=used)
        used |= set(out[trait])
    return out


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def trait_files(trait: str) -> dict[str, str]:
    """File name -> content of the toy trait folder ``trait``."""
    pairs = _pairs(trait)
    questions = steering_questions()[trait]
    steering: dict = {"questions": questions}
    if trait != "refusal":
        # refusal: plain requests that the unsteered model answers; steering towards refusal is the
        # positive (default) direction, so "direction" is left out as in trait-interp's refusal.
        steering["direction"] = "positive"
        steering["eval_prompt"] = EVAL_PROMPTS[trait]
    words = vocab.keywords(trait)
    pos, neg = vocab.POLE_NAMES[trait]
    trait_yaml = (
        f"# Toy trait {trait}: {pos} (positive) vs {neg} (negative). Written by `python -m traitflow.toy data`.\n"
        f"description: {json.dumps(DESCRIPTIONS[trait])}\n"
        "keywords:\n"
        f"  positive: {_yaml_list(words['positive'])}\n"
        f"  negative: {_yaml_list(words['negative'])}\n"
    )
    return {
        "positive.jsonl": _jsonl([{"prompt": p, "system_prompt": s} for p, s, _ in pairs]),
        "negative.jsonl": _jsonl([{"prompt": p, "system_prompt": s} for p, _, s in pairs]),
        "definition.txt": DEFINITIONS[trait],
        "steering.json": json.dumps(steering, indent=2, ensure_ascii=False) + "\n",
        "trait.yaml": trait_yaml,
    }


def general_prompt_set() -> dict:
    """The ``toy/general`` prompt set: neutral prompts over training topics, no system prompt."""
    used = scenario_prompts().union(*steering_questions().values())
    texts = _questions(N_GENERAL, salt=7, exclude=used)
    return {
        "name": "toy general",
        "description": "Neutral questions over the toy world's training topics, no system prompt: "
        "an unsteered toy model answers mid-scale on every trait.",
        "prompts": [{"id": i + 1, "text": text} for i, text in enumerate(texts)],
    }


def write_all(root: Path) -> list[Path]:
    """Write the toy trait folders and prompt set under ``root``; returns the files written."""
    written: list[Path] = []
    for trait in vocab.TRAITS:
        folder = root / "traits" / "toy" / trait
        for name, content in trait_files(trait).items():
            atomic_write_text(folder / name, content)
            written.append(folder / name)
    general = root / "inference" / "toy" / "general.json"
    data = general_prompt_set()
    lines = ",\n".join(f"    {json.dumps(p, ensure_ascii=False)}" for p in data["prompts"])
    text = (
        "{\n"
        f'  "name": {json.dumps(data["name"])},\n'
        f'  "description": {json.dumps(data["description"], ensure_ascii=False)},\n'
        f'  "prompts": [\n{lines}\n  ]\n'
        "}\n"
    )
    atomic_write_text(general, text)
    written.append(general)
    from traitflow.toy.benchmark import files as benchmark_files

    for name, content in benchmark_files().items():
        atomic_write_text(root / "benchmarks" / "toy" / name, content)
        written.append(root / "benchmarks" / "toy" / name)
    return written
