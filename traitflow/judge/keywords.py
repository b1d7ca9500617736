"""Keywords judge: trait scores from pole word rates, coherence from well-formedness.

A judge that needs no model and no network. It suits the toy world, whose pole words are known
(``traitflow.toy.vocab``; a trait's ``trait.yaml`` lists them under ``keywords``), and serves as
a fast, deterministic stand-in anywhere a rough score is enough.

Words
    The answer is lower-cased and split into words with ``[a-z0-9]+(?:'[a-z]+)?``. A keyword
    matches a word exactly; a keyword ending in ``*`` matches any word starting with the rest
    (``hope*`` matches hope, hopeful, hopes); a keyword of several words matches that
    sequence of words. Each occurrence counts once.

Trait score (0-100, 50 = neutral)::

    p, n  = occurrences of positive and negative keywords
    N     = number of words in the answer
    rate  = (p - n) / max(N, MIN_WORDS)              # net pole-word rate
    score = 50 + 50 * tanh(rate / RATE_SCALE)

With RATE_SCALE = 0.1 and MIN_WORDS = 10, a 20-word answer with 4 net positive words scores
~98, one with 1 net positive word ~73, no pole words (or as many of each) 50. MIN_WORDS keeps
a two-word answer from reaching the extremes on one word. Empty answers get ``None``.

Coherence (0-100)::

    coherence = 100 * length * repetition * punctuation * junk * echo

    length       words 0 -> 0, 1 -> 0.35, 2 -> 0.55, 3 -> 0.75, >= 4 -> 1
    repetition   (1 - adjacent) * (1 - 1.25 * max(0, ngram - 0.15)) * (1 - 1.5 * max(0, top - 0.25))
                 adjacent = share of words equal to the word before them;
                 ngram    = 1 - distinct trigrams / trigrams (bigrams below 8 words);
                 top      = share of the most frequent word (answers of >= 6 words);
                 each factor clipped to [0, 1]
    punctuation  0.8 if an answer of >= 12 words has no . ! ? , ; : at all, else 1
    junk         1 - share of whitespace-separated chunks with no letter, or with a
                 character outside letters, digits, common punctuation and quotes
    echo         0.5 if the answer just repeats the question, else 1

A fluent toy reply ("Certainly. Indeed, chess looks steady and typical.") scores 100; "great
great great great great" scores ~0. A reply cut mid-sentence by ``max_new_tokens`` is not
penalised. It knows nothing of meaning: grammatical nonsense scores high.
"""

import math
import re
from collections import Counter

RATE_SCALE = 0.1
MIN_WORDS = 10
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_ALLOWED_CHUNK = re.compile(r"^[\w.,;:!?'\"()\[\]\-–—/%&$@#*+=’“”‘…]+$")
_LETTER = re.compile(r"[^\W\d_]")

__all__ = ["KeywordJudge", "words", "count_keywords"]


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``, as the judge sees them."""
    return _WORD.findall(text.lower())


def count_keywords(tokens: list[str], keywords: list[str]) -> int:
    """Occurrences of ``keywords`` (exact, ``prefix*`` or multi-word) in the word list ``tokens``."""
    exact: set[str] = set()
    prefixes: list[str] = []
    phrases: list[list[str]] = []
    for keyword in keywords:
        key = keyword.strip().lower()
        if not key:
            continue
        if " " in key:
            phrases.append(words(key))
        elif key.endswith("*"):
            prefixes.append(key[:-1])
        else:
            exact.add(key)
    count = 0
    for token in tokens:
        if token in exact or any(token.startswith(p) for p in prefixes if p):
            count += 1
    for phrase in phrases:
        n = len(phrase)
        count += sum(1 for i in range(len(tokens) - n + 1) if tokens[i : i + n] == phrase)
    return count


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


class KeywordJudge:
    """Scores answers by keyword rates (traits) and by well-formedness (coherence).

    Example:
        >>> judge = KeywordJudge()
        >>> judge.score_trait("Great news! Chess looks bright.", ["great", "bright"], ["bleak"]) > 90
        True
        >>> judge.coherence("Tell me about chess.", "great great great great great") < 10
        True
    """

    name = "keywords"

    def __init__(self, rate_scale: float = RATE_SCALE, min_words: int = MIN_WORDS):
        self.rate_scale = rate_scale
        self.min_words = min_words

    def score_trait(self, answer: str, positive: list[str], negative: list[str]) -> float | None:
        """Trait score 0-100 of ``answer``: 50 neutral, high for positive keywords; None if empty."""
        tokens = words(answer)
        if not tokens:
            return None
        p = count_keywords(tokens, positive)
        n = count_keywords(tokens, negative)
        rate = (p - n) / max(len(tokens), self.min_words)
        return 50.0 + 50.0 * math.tanh(rate / self.rate_scale)

    def coherence(self, question: str, answer: str) -> float:
        """Well-formedness 0-100 of ``answer`` (see the module docstring for the formula)."""
        tokens = words(answer)
        n = len(tokens)
        if n == 0:
            return 0.0
        length = (0.35, 0.55, 0.75)[n - 1] if n < 4 else 1.0

        adjacent = sum(1 for a, b in zip(tokens, tokens[1:], strict=False) if a == b) / n
        size = 3 if n >= 8 else 2
        grams = [tuple(tokens[i : i + size]) for i in range(n - size + 1)]
        ngram = 1.0 - len(set(grams)) / len(grams) if len(grams) >= 2 else 0.0
        top = Counter(tokens).most_common(1)[0][1] / n if n >= 6 else 0.0
        repetition = _clip(1 - adjacent) * _clip(1 - 1.25 * max(0.0, ngram - 0.15)) * _clip(1 - 1.5 * max(0.0, top - 0.25))

        punctuation = 0.8 if n >= 12 and not re.search(r"[.!?,;:]", answer) else 1.0

        chunks = answer.split()
        bad = sum(1 for c in chunks if not _LETTER.search(c) or not _ALLOWED_CHUNK.match(c))
        junk = 1.0 - bad / len(chunks)

        echo = 0.5 if question.strip() and words(question) == tokens else 1.0
        return round(100.0 * length * repetition * punctuation * junk * echo, 2)
