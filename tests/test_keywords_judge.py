"""The keywords judge: trait scores from pole words, coherence from well-formedness."""

import sys

import pytest

from traitflow.judge.keywords import KeywordJudge, count_keywords, words
from traitflow.toy import corpus, vocab

POS = ["great", "bright", "hopeful"]
NEG = ["sadly", "bleak", "grim"]


@pytest.fixture
def judge() -> KeywordJudge:
    return KeywordJudge()


def test_does_not_import_torch_or_dagster():
    import subprocess

    code = "import sys, traitflow.judge.keywords; print('torch' in sys.modules, 'dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_ranks_obvious_cases(judge):
    high = judge.score_trait("Great news! Chess looks bright and hopeful.", POS, NEG)
    low = judge.score_trait("Sadly, chess looks bleak and grim.", POS, NEG)
    mid = judge.score_trait("Chess looks steady and typical.", POS, NEG)
    assert high > 90 and low < 10 and mid == 50
    assert judge.score_trait("Chess looks bright but also bleak.", POS, NEG) == 50
    one = judge.score_trait("Chess looks bright today, as usual for people who play the game well.", POS, NEG)
    assert 55 < one < high


def test_empty_answer_is_none(judge):
    assert judge.score_trait("", POS, NEG) is None
    assert judge.score_trait("  ... ", POS, NEG) is None


def test_keyword_forms():
    tokens = words("Hopefully the Sun is BRIGHT; thank you very much.")
    assert tokens == ["hopefully", "the", "sun", "is", "bright", "thank", "you", "very", "much"]
    assert count_keywords(tokens, ["bright"]) == 1
    assert count_keywords(tokens, ["hope*"]) == 1  # prefix
    assert count_keywords(tokens, ["thank you"]) == 1  # phrase
    assert count_keywords(tokens, ["hope"]) == 0  # exact by default


def test_coherence_fluent_vs_degenerate(judge):
    fluent = "Certainly. Indeed, chess looks steady and typical. Moreover, people who try chess adapt."
    assert judge.coherence("Tell me about chess.", fluent) >= 80
    assert judge.coherence("q", "great great great great great") < 20
    assert judge.coherence("q", "Great news! chess chess chess chess chess chess chess chess") < 50
    assert judge.coherence("q", "the future of the future of the future of the future of the future") < 50
    assert judge.coherence("q", "") == 0
    assert judge.coherence("q", "ok") < 50
    assert judge.coherence("q", "#### @@@ %%% 1234 ;;;; ...") < 50
    # a reply cut by max_new_tokens is not penalised
    assert judge.coherence("q", "Yeah dude. Honestly chess feels kinda steady these days, lol. Yep the future of") >= 80
    # echoing the question
    assert judge.coherence("Tell me about chess.", "Tell me about chess.") <= 50


def test_toy_corpus_replies_score_as_labelled(judge):
    for conv in corpus.generate(300, seed=11):
        assert judge.coherence(conv.user, conv.reply) >= 80, conv.reply
        for trait in vocab.TRAITS:
            score = judge.score_trait(conv.reply, **vocab.keywords(trait))
            sign = conv.traits[trait]
            if sign > 0:
                assert score > 70, (trait, conv.reply)
            elif sign < 0:
                assert score < 30, (trait, conv.reply)
            else:
                assert score == 50, (trait, conv.reply)
