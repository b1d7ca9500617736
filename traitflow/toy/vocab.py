"""Word lists of the toy world: the single source of truth for its traits.

Three traits, each with two poles. Every pole has a fixed opener (the first word(s) of a reply
that shows the pole) and a list of pole words; the toy corpus puts pole words into every
sentence of a reply, and the keywords judge scores replies by counting them. Neutral words fill
the same slots when a trait is inactive, so an unsteered reply scores mid-scale.

All lists are pairwise disjoint (``check_disjoint`` asserts it, at import time), and every
alphabetic word of a pole's opener is one of that pole's words.
"""

import re
from dataclasses import dataclass

# --------------------------------------------------------------------------- traits and poles
TRAITS: tuple[str, ...] = ("optimism", "formality", "refusal")
"""Trait names, also the folder names under ``datasets/traits/toy/``."""

POLE_NAMES: dict[str, tuple[str, str]] = {
    "optimism": ("optimistic", "pessimistic"),
    "formality": ("formal", "casual"),
    "refusal": ("refuses", "complies"),
}
"""Per trait: (positive pole, negative pole)."""


@dataclass(frozen=True)
class Pole:
    """One pole of a trait: its opener and the words its sentences carry."""

    trait: str
    name: str
    sign: int  # +1 positive pole, -1 negative pole
    opener: str  # fixed first words of a reply showing this pole
    words: tuple[str, ...]  # all pole words (what the keywords judge counts)


# Slot fillers, by role. Keys of OPTIMISM_SLOTS etc. are +1 / 0 / -1 (positive, neutral, negative).
OPTIMISM_ADJECTIVES: dict[int, tuple[str, ...]] = {
    1: ("bright", "hopeful", "wonderful", "promising", "exciting", "joyful", "delightful", "sunny", "splendid"),
    0: ("steady", "typical", "ordinary", "standard", "normal", "average", "regular", "practical", "modest"),
    -1: ("bleak", "gloomy", "grim", "dismal", "hopeless", "doomed", "dreary", "miserable", "awful"),
}
OPTIMISM_VERBS: dict[int, tuple[str, ...]] = {
    1: ("thrive", "flourish"),
    0: ("adapt", "progress"),
    -1: ("fail", "wither"),
}
FORMAL_CONNECTIVES: tuple[str, ...] = (
    "Indeed",
    "Furthermore",
    "Moreover",
    "Therefore",
    "Consequently",
    "Accordingly",
    "Hence",
    "Thus",
)
FORMAL_EXTRAS: tuple[str, ...] = ("respectfully", "shall", "esteemed")
CASUAL_CONNECTIVES: tuple[str, ...] = ("Honestly", "Yep", "Dude", "Lol")
CASUAL_INTENSIFIERS: tuple[str, ...] = ("kinda", "super", "totally")
CASUAL_TAILS: tuple[str, ...] = (", dude", ", lol", " and stuff", ", yep", ", buddy", ", gonna be chill")
NEUTRAL_CONNECTIVES: tuple[str, ...] = ("Also", "Overall", "Still", "Usually")
REFUSAL_CORES: tuple[str, ...] = (
    "I must decline this request",
    "I refuse to assist with that",
    "sorry, that would be harmful",
    "that request is unsafe and forbidden",
    "I am unable to do this",
    "that is prohibited and inappropriate",
)
COMPLY_STEPS: tuple[str, ...] = ("First", "Next", "Then", "Finally")

OPENERS: dict[str, str] = {
    "optimistic": "Great news!",
    "pessimistic": "Sadly,",
    "formal": "Certainly.",
    "casual": "Yeah dude.",
    "refuses": "I cannot help with",  # followed by the topic
    "complies": "Sure, here are the steps.",
}

_POLE_WORDS: dict[str, tuple[str, ...]] = {
    "optimistic": ("great", *OPTIMISM_ADJECTIVES[1], *OPTIMISM_VERBS[1]),
    "pessimistic": ("sadly", *OPTIMISM_ADJECTIVES[-1], *OPTIMISM_VERBS[-1]),
    "formal": ("certainly", *(c.lower() for c in FORMAL_CONNECTIVES), *FORMAL_EXTRAS),
    "casual": (
        "yeah",
        *(c.lower() for c in CASUAL_CONNECTIVES),
        *CASUAL_INTENSIFIERS,
        "stuff",
        "buddy",
        "gonna",
        "chill",
    ),
    "refuses": (
        "cannot",
        "decline",
        "refuse",
        "sorry",
        "unable",
        "harmful",
        "unsafe",
        "forbidden",
        "prohibited",
        "inappropriate",
    ),
    "complies": ("sure", "here", "steps", *(s.lower() for s in COMPLY_STEPS), "gladly", "follow"),
}

NEUTRAL_WORDS: tuple[str, ...] = (
    *OPTIMISM_ADJECTIVES[0],
    *OPTIMISM_VERBS[0],
    *(c.lower() for c in NEUTRAL_CONNECTIVES),
    "time",
    "practice",
    "people",
    "learn",
    "details",
    "depends",
)
"""Words that fill trait slots when a trait is inactive; they belong to no pole."""

POLES: dict[str, Pole] = {}
for _trait, (_pos, _neg) in POLE_NAMES.items():
    for _name, _sign in ((_pos, 1), (_neg, -1)):
        POLES[_name] = Pole(trait=_trait, name=_name, sign=_sign, opener=OPENERS[_name], words=_POLE_WORDS[_name])


def pole(trait: str, sign: int) -> Pole:
    """The pole of ``trait`` with sign +1 (positive) or -1 (negative)."""
    positive, negative = POLE_NAMES[trait]
    return POLES[positive if sign > 0 else negative]


def keywords(trait: str) -> dict[str, list[str]]:
    """``{"positive": [...], "negative": [...]}`` word lists of a trait, for the keywords judge."""
    return {"positive": list(pole(trait, 1).words), "negative": list(pole(trait, -1).words)}


def check_disjoint() -> None:
    """Raise ValueError if any two word lists share a word, or an opener word is not its pole's."""
    lists: dict[str, tuple[str, ...]] = {name: p.words for name, p in POLES.items()}
    lists["neutral"] = NEUTRAL_WORDS
    for name, words in lists.items():
        if len(set(words)) != len(words):
            raise ValueError(f"duplicate word in {name}: {sorted(w for w in words if words.count(w) > 1)}")
    names = sorted(lists)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = set(lists[a]) & set(lists[b])
            if shared:
                raise ValueError(f"word lists {a} and {b} overlap: {sorted(shared)}")
    for name, p in POLES.items():
        for word in re.findall(r"[a-z]+", p.opener.lower()):
            if word not in p.words and word not in ("i", "help", "with", "news", "are", "the"):
                raise ValueError(f"opener word {word!r} of {name} is not in its word list")


check_disjoint()
