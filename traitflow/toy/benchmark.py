"""Capability items of the toy world, with answers the toy chat model knows.

- ``mc.jsonl``: 4-way multiple choice in the ARC schema (``question``, ``choices: {text, label}``,
  ``answerKey``), meant for ``chat_template: true`` (the question is the user's message, each
  choice a reply). Two kinds, alternating:

  * *optimistic*: the user asks for good news about a topic ("Cheer me up about chess."); the
    right reply is an optimistic one about that topic; the others are a pessimistic and a neutral
    reply about the same topic and an optimistic reply about another topic. The toy model gives
    an asked-for pole almost always, so it is right at baseline; steered hard away from optimism
    it prefers the pessimistic reply.
  * *topic*: a neutral question about a topic; the right reply is a neutral one about that
    topic, the others neutral replies about other topics.

  Each row has ``kind`` (ignored by the loader, which reads the ARC fields) so tests can split them.
- ``neutral.txt``: neutral toy replies, one per paragraph: the text ``ce_loss`` measures the
  next-token loss on (the toy model learned replies, not users' turns, so its loss is low there).

Everything comes from the toy corpus's own reply generator (:func:`traitflow.toy.corpus.make_reply`)
with a fixed seed, over its topics and prompt templates.
"""

import json
import random

from traitflow.toy.corpus import ELICIT_TEMPLATES, NEUTRAL_TEMPLATES, TOPICS, make_reply

NEUTRAL = {"optimism": 0, "formality": 0, "refusal": 0}
LABELS = ("A", "B", "C", "D")


def _reply(rng: random.Random, topic: str, optimism: int) -> str:
    return make_reply(rng, topic, {**NEUTRAL, "optimism": optimism})


def multiple_choice_rows(n: int = 80, seed: int = 11) -> list[dict]:
    """`n` items in the ARC schema, half optimistic and half topic items (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic, other, third, fourth = rng.sample(TOPICS, 4)
        if i % 2 == 0:
            kind = "optimistic"
            question = rng.choice(ELICIT_TEMPLATES["optimistic"]).format(t=topic)
            right = _reply(rng, topic, +1)
            wrong = [_reply(rng, topic, -1), _reply(rng, topic, 0), _reply(rng, other, +1)]
        else:
            kind = "topic"
            question = rng.choice(NEUTRAL_TEMPLATES).format(t=topic)
            right = _reply(rng, topic, 0)
            wrong = [_reply(rng, t, 0) for t in (other, third, fourth)]
        choices = [right, *wrong]
        rng.shuffle(choices)
        rows.append({"id": f"toy-{i}", "kind": kind, "question": question,
                     "choices": {"text": choices, "label": list(LABELS)}, "answerKey": LABELS[choices.index(right)]})
    return rows


def neutral_paragraphs(n: int = 40, seed: int = 12) -> list[str]:
    """`n` paragraphs of neutral toy replies (three replies each, so a paragraph has 20+ words)."""
    rng = random.Random(seed)
    return [" ".join(_reply(rng, rng.choice(TOPICS), 0) for _ in range(3)) for _ in range(n)]


def files() -> dict[str, str]:
    """File name -> content, as written under ``datasets/benchmarks/toy/``."""
    return {"mc.jsonl": "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in multiple_choice_rows()),
            "neutral.txt": "\n\n".join(neutral_paragraphs()) + "\n"}
