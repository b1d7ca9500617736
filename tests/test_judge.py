"""The judge: logprob-weighted scores, prompts, backends, and failures over real HTTP.

litellm talks to the OpenAI-compatible test server in ``tests/judge_server.py`` on 127.0.0.1;
retries use a 10 ms backoff so failure tests stay fast.
"""

import asyncio
import math
import subprocess
import sys

import pytest

from tests.judge_server import Behaviour, JudgeServer, judge_server_fixture  # noqa: F401
from traitflow.data.traits import load_trait
from traitflow.errors import TraitflowError
from traitflow.judge import (
    Judge,
    JudgeRequest,
    JudgeScore,
    KeywordsBackend,
    coherence_request,
    judge_spec_for,
    make_judge,
    position_request,
    score_from_logprobs,
    score_from_text,
    trait_request,
    vetting_request,
)
from traitflow.judge.base import MalformedReply
from traitflow.judge.llm import completion_from_response, redact
from traitflow.judge.prompts import calls_for, fill
from traitflow.specs.models import JudgeSpec, Keywords

FAKE_KEY = "sk-test-not-a-real-key-0123456789"
DIST = {"70": 0.5, "80": 0.3, "foo": 0.2}  # -> 73.75 with mass 0.8


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    return FAKE_KEY


def spec_for(server: JudgeServer, **fields) -> JudgeSpec:
    values = dict(model="openai/judge-test", api_base=server.url, timeout_s=5.0, max_retries=2, backoff_s=0.01)
    values.update(fields)
    return JudgeSpec(**values)


def user_prompt(body: dict) -> str:
    return body["messages"][-1]["content"]


@pytest.fixture
def trait(tmp_path):
    folder = tmp_path / "traits" / "demo" / "optimism"
    folder.mkdir(parents=True)
    (folder / "positive.txt").write_text("Cheer me up about chess.\n")
    (folder / "negative.txt").write_text("Tell me why chess is hopeless.\n")
    (folder / "definition.txt").write_text("Optimism: the answer expects good outcomes.\n")
    (folder / "trait.yaml").write_text("keywords:\n  positive: [great, bright, hope*]\n  negative: [bleak, grim]\n")
    return load_trait(folder, "demo/optimism")


# --------------------------------------------------------------------------- reading scores
def test_weighted_mean_over_integer_tokens():
    top = [(t, math.log(p)) for t, p in DIST.items()]
    score, mass = score_from_logprobs(top, 0, 100, 0.25)
    assert score == pytest.approx(73.75)
    assert mass == pytest.approx(0.8)


def test_tokens_outside_range_or_not_integers_do_not_count():
    top = [(" 90", math.log(0.3)), ("150", math.log(0.3)), ("-5", math.log(0.1)), ("9.5", math.log(0.1)), ("٣", math.log(0.1))]
    score, mass = score_from_logprobs(top, 0, 100, 0.25)
    assert (score, mass) == (pytest.approx(90.0), pytest.approx(0.3))
    score, mass = score_from_logprobs(top, 0, 100, 0.5)
    assert score is None and mass == pytest.approx(0.3)


def test_score_from_text():
    assert score_from_text("85", 0, 100) == 85
    assert score_from_text("Score: 42/100", 0, 100) == 42
    assert score_from_text("banana", 0, 100) is None
    assert score_from_text("250", 0, 100) is None
    assert score_from_text("", 0, 100) is None


def test_completion_from_response_handles_missing_parts():
    with pytest.raises(MalformedReply, match="no choices"):
        completion_from_response({"choices": []})
    with pytest.raises(MalformedReply, match="no message"):
        completion_from_response({"choices": [{"index": 0}]})
    assert completion_from_response({"choices": [{"message": {"content": None}}]}).text == ""  # judged: no number
    reply = completion_from_response({"choices": [{"message": {"content": "7"}, "logprobs": None}]})
    assert reply.text == "7" and reply.top_logprobs is None
    only_first = {"choices": [{"message": {"content": "7"}, "logprobs": {"content": [{"token": "7", "logprob": -0.1}]}}]}
    assert completion_from_response(only_first).top_logprobs == (("7", -0.1),)


# --------------------------------------------------------------------------- prompts and requests
def test_trait_request_uses_definition_or_eval_prompt(trait, tmp_path):
    request = trait_request(trait, "How is chess?", "Great and bright!")
    assert request.kind == "trait" and request.keywords.positive == ["great", "bright", "hope*"]
    prompt = calls_for(request)[0].prompt
    assert "expects good outcomes" in prompt and "How is chess?" in prompt and "Great and bright!" in prompt

    (trait.folder / "steering.json").write_text(
        '{"questions": ["How is chess?"], "eval_prompt": '
        '"T={trait_name} D={trait_definition} Q={question} A={answer} R={response} {\\"json\\": 1} Reply 0-100."}'
    )
    with_eval = load_trait(trait.folder, trait.name)
    request = trait_request(with_eval, "How is {chess}?", "It is {answer}.")
    assert request.kind == "eval_prompt"
    prompt = calls_for(request)[0].prompt
    assert prompt == (
        "T=demo/optimism D=Optimism: the answer expects good outcomes. Q=How is {chess}? "
        'A=It is {answer}. R=It is {answer}. {"json": 1} Reply 0-100.'
    )


def test_fill_is_one_pass():
    assert fill("{question} / {answer}", question="{answer}", answer="x") == "{answer} / x"


def test_vetting_sees_only_the_first_16_words(trait):
    completion = " ".join(f"w{i}" for i in range(1, 31))
    request = vetting_request(trait, "Cheer me up.", completion)
    assert request.answer.split() == [f"w{i}" for i in range(1, 17)]
    assert "w17" not in calls_for(request)[0].prompt


def test_position_prompt_numbers_words(trait):
    call = calls_for(position_request(trait, "Cheer me up.", "Great news: chess is bright."))[0]
    assert "1:Great 2:news: 3:chess" in call.prompt and (call.low, call.high) == (1, 5)
    assert calls_for(position_request(trait, "Cheer me up.", "   ")) == []


# --------------------------------------------------------------------------- keywords backend
def test_keywords_backend(trait):
    judge = make_judge(JudgeSpec(model="keywords"), cache_path=None)
    assert isinstance(judge, KeywordsBackend) and isinstance(judge, Judge)
    scores = judge.score(
        [
            trait_request(trait, "How is chess?", "Great news! Chess looks bright and hopeful."),
            vetting_request(trait, "Gloom?", "Sadly, chess looks bleak and grim."),
            coherence_request("Chess?", "great great great great great"),
            position_request(trait, "Chess?", "Well, chess looks bright today."),
            position_request(trait, "Chess?", "Chess is a game."),
            trait_request(trait, "Chess?", ""),
        ]
    )
    assert scores[0].score > 90 and scores[1].score < 10 and scores[2].score < 10
    assert scores[3].score == 4.0 and scores[4].score is None and scores[5].score is None
    assert all(s.mass is None and not s.cached for s in scores)
    assert judge.stats.requests == 6 and judge.stats.none_count == 2 and judge.stats.calls == 0
    assert judge.stats.none_rate == pytest.approx(2 / 6)


def test_keywords_backend_needs_keywords():
    judge = make_judge(JudgeSpec(model="keywords"), cache_path=None)
    with pytest.raises(TraitflowError, match=r"datasets/traits/demo/x/trait.yaml: keywords: the keywords judge needs"):
        judge.score([JudgeRequest(kind="trait", question="q", answer="a", trait_name="demo/x")])
    with pytest.raises(TraitflowError, match="keywords: the keywords judge needs positive and negative word lists"):
        judge.score([JudgeRequest(kind="trait", question="q", answer="a", keywords=Keywords())])
    assert judge.score([coherence_request("q", "A fine answer here.")])[0].score == 100.0


def test_trait_picks_a_judge_the_experiment_allows(trait, tmp_path):
    from traitflow.specs.models import ExperimentSpec

    experiment = ExperimentSpec(name="e", variants={"a": "m"}, traits=["*"], judge=JudgeSpec(model="openai/gpt-4.1-mini"),
                                judges={"plain": JudgeSpec(model="keywords")})
    assert judge_spec_for(experiment, trait) is experiment.judge
    (trait.folder / "trait.yaml").write_text("judge: plain\n")
    assert judge_spec_for(experiment, load_trait(trait.folder, trait.name)) is experiment.judges["plain"]


def test_importing_and_making_judges_is_cheap():
    code = (
        "import sys; from traitflow.judge import make_judge; from traitflow.specs.models import JudgeSpec; "
        "make_judge(JudgeSpec(model='openai/x'), None); make_judge(JudgeSpec(model='keywords'), None); "
        "print([m for m in ('litellm', 'torch', 'dagster') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- litellm over HTTP
def test_logprob_score_over_http(judge_server, api_key, trait):
    judge_server.default = Behaviour(distribution=DIST)
    judge = make_judge(spec_for(judge_server), cache_path=None)
    [score] = judge.score([trait_request(trait, "How is chess?", "Bright!")])
    assert score == JudgeScore(pytest.approx(73.75), pytest.approx(0.8), cached=False)
    [body] = judge_server.requests
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["temperature"] == 0 and body["max_tokens"] <= 4
    assert "expects good outcomes" in user_prompt(body)
    assert judge_server.paths == ["/v1/chat/completions"]
    assert judge.stats.calls == 1 and judge.stats.none_count == 0


def test_low_mass_is_none_and_counted(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"I": 0.6, "The": 0.3, "70": 0.1})
    judge = make_judge(spec_for(judge_server), cache_path=None)
    [trait_score, coherence] = judge.score([JudgeRequest("trait", "q", "a"), coherence_request("q", "a")])
    assert trait_score.score is None and trait_score.mass == pytest.approx(0.1)
    assert coherence.score == pytest.approx(70.0)  # coherence needs only 0.1
    assert judge.stats.none_count == 1 and judge.stats.errors == 0 and judge.stats.none_rate == 0.5


def test_text_reply_without_logprobs(judge_server, api_key):
    judge_server.default = Behaviour(logprobs=False, text="85")
    judge_server.rule("ZZZ", Behaviour(logprobs=False, text="I would rather not say."))
    judge = make_judge(spec_for(judge_server), cache_path=None)
    parsed, garbage = judge.score([JudgeRequest("trait", "q", "a"), JudgeRequest("trait", "q", "ZZZ")])
    assert parsed == JudgeScore(85.0, None, cached=False)
    assert garbage.score is None and garbage.mass is None
    assert judge.stats.none_count == 1 and judge.stats.errors == 0


def test_coherence_capped_when_off_topic(judge_server, api_key):
    judge_server.rule("Reply 1 if the answer engages", Behaviour(distribution={"0": 0.8, "1": 0.2}))
    judge_server.default = Behaviour(distribution={"90": 1.0})
    judge = make_judge(spec_for(judge_server), cache_path=None)
    [capped] = judge.score([coherence_request("How do I bake bread?", "Trains are long.")])
    assert capped.score == 50.0 and capped.mass == pytest.approx(1.0)
    assert judge_server.count == 2

    judge_server.reset()
    judge_server.rule("Reply 1 if the answer engages", Behaviour(distribution={"1": 0.9, "0": 0.1}))
    judge_server.default = Behaviour(distribution={"90": 1.0})
    assert judge.score([coherence_request("How do I bake bread?", "Knead, rest, bake.")])[0].score == 90.0


def test_position_score(judge_server, api_key, trait):
    judge_server.default = Behaviour(distribution={"3": 0.6, "4": 0.4, "40": 0.0})
    judge = make_judge(spec_for(judge_server), cache_path=None)
    [score] = judge.score([position_request(trait, "Cheer me up.", "Great news: chess is bright and fun.")])
    assert score.score == pytest.approx(3.4)
    assert "between" not in user_prompt(judge_server.requests[0]) and "from 1 to 7" in user_prompt(judge_server.requests[0])


def test_retries_after_http_500(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"60": 1.0}, fail_first=2)
    judge = make_judge(spec_for(judge_server, max_retries=2), cache_path=None)
    [score] = judge.score([JudgeRequest("trait", "q", "a")])
    assert score.score == 60.0
    assert judge_server.count == 3 and judge.stats.calls == 3 and judge.stats.errors == 0


def test_one_failing_request_does_not_sink_the_batch(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"60": 1.0})
    judge_server.rule("BROKEN", Behaviour(fail_first=10**6))
    judge = make_judge(spec_for(judge_server, max_retries=1, max_failure_rate=0.5), cache_path=None)  # 1 of 3 may fail
    scores = judge.score(
        [JudgeRequest("trait", "q", "a1"), JudgeRequest("trait", "q", "BROKEN"), JudgeRequest("trait", "q", "a2")]
    )
    assert [s.score for s in scores] == [60.0, None, 60.0]
    assert judge.stats.errors == 1 and judge.stats.none_count == 1
    assert judge_server.count == 4  # the broken one was tried twice


def test_timeout(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"60": 1.0})
    judge_server.rule("SLOW", Behaviour(distribution={"60": 1.0}, delay_s=5.0))  # would answer 60 after 5 s
    judge = make_judge(spec_for(judge_server, timeout_s=0.3, max_retries=1, max_failure_rate=0.5), cache_path=None)
    scores = judge.score([JudgeRequest("trait", "q", "SLOW"), JudgeRequest("trait", "q", "fast")])
    assert [s.score for s in scores] == [None, 60.0]  # the slow one was cut off, not waited for
    assert judge.stats.errors == 1
    assert sum("SLOW" in user_prompt(b) for b in judge_server.requests) == 2  # a timeout is retried


def test_unreachable_api_base_is_one_line_error(api_key):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    api_base = f"http://127.0.0.1:{port}/v1"
    judge = make_judge(JudgeSpec(model="openai/judge-test", api_base=api_base, max_retries=1, backoff_s=0.01), None)
    with pytest.raises(TraitflowError) as info:
        judge.score([JudgeRequest("trait", "q", "a"), JudgeRequest("trait", "q", "b")])
    message = str(info.value)
    assert message.startswith(f"judge openai/judge-test unreachable at {api_base}: ") and "\n" not in message
    assert FAKE_KEY not in message and judge.stats.errors == 2


def test_missing_api_key(judge_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = make_judge(JudgeSpec(model="openai/gpt-4.1-mini"), None)
    with pytest.raises(TraitflowError, match="judge openai/gpt-4.1-mini needs OPENAI_API_KEY in the environment"):
        judge.score([JudgeRequest("trait", "q", "a")])
    assert judge_server.count == 0


def test_unknown_model_string(api_key):
    judge = make_judge(JudgeSpec(model="no-such-provider-xyz/some-model"), None)
    with pytest.raises(TraitflowError, match="not a litellm model string"):
        judge.check()


def test_rejected_key_never_leaks(judge_server, api_key):
    judge_server.default = Behaviour(fail_first=10**6, status=401, echo_auth=True)
    judge = make_judge(spec_for(judge_server), cache_path=None)
    with pytest.raises(TraitflowError) as info:
        judge.score([JudgeRequest("trait", "q", f"a{i}") for i in range(4)])
    assert "judge openai/judge-test" in str(info.value) and "\n" not in str(info.value)
    assert FAKE_KEY not in str(info.value) and FAKE_KEY[8:] not in str(info.value)
    assert judge_server.count <= 4  # authentication is not retried


def test_redact(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok_abcdefgh")
    assert redact("failed with tok_abcdefgh and sk-proj-abcdef123456") == "failed with *** and sk-***"


def test_hosted_vllm_needs_no_key(judge_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge_server.default = Behaviour(distribution={"20": 1.0})
    judge = make_judge(spec_for(judge_server, model="hosted_vllm/judge-test"), cache_path=None)
    assert judge.score([JudgeRequest("trait", "q", "a")])[0].score == 20.0


def test_concurrency_is_bounded_and_order_kept(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"10": 1.0}, delay_s=0.1)
    for i in range(6):
        judge_server.rule(f"MARK{i}", Behaviour(distribution={str(10 * i): 1.0}, delay_s=0.1))
    judge = make_judge(spec_for(judge_server, max_concurrency=2), cache_path=None)
    scores = judge.score([JudgeRequest("trait", "q", f"MARK{i}") for i in range(6)])
    assert [s.score for s in scores] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert judge_server.max_in_flight == 2


def test_identical_requests_in_a_batch_are_sent_once(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"30": 1.0})
    judge = make_judge(spec_for(judge_server), cache_path=None)
    scores = judge.score([JudgeRequest("trait", "q", "same")] * 5)
    assert [s.score for s in scores] == [30.0] * 5 and judge_server.count == 1


def test_score_from_inside_an_event_loop(judge_server, api_key):
    judge_server.default = Behaviour(distribution={"30": 1.0})
    judge = make_judge(spec_for(judge_server), cache_path=None)

    async def notebook_cell():
        return judge.score([JudgeRequest("trait", "q", "a")])

    assert asyncio.run(notebook_cell())[0].score == 30.0


# --------------------------------------------------------------------------- local:<variant>
def test_local_variant_judge(tiny_loaded, tmp_path):
    loads = []

    def load_variant(name):
        loads.append(name)
        return tiny_loaded("llama")

    judge = make_judge(JudgeSpec(model="local:chat"), cache_path=tmp_path / "cache.sqlite", load_variant=load_variant)
    assert not loads  # nothing loads until a call misses the cache
    requests = [JudgeRequest("trait", "How is chess?", "Bright!"), coherence_request("How is chess?", "Bright!")]
    first = judge.score(requests)
    assert loads == ["chat"] and judge.stats.calls == 3 and judge.model == "local:chat"
    trait_score = first[0]
    # a random model puts little mass on integers: the mass is reported and the score is None below 0.25
    assert trait_score.mass is not None and 0.0 <= trait_score.mass <= 1.0
    assert (trait_score.score is None) == (trait_score.mass < 0.25)
    if trait_score.score is not None:
        assert 0 <= trait_score.score <= 100

    again = make_judge(JudgeSpec(model="local:chat"), cache_path=tmp_path / "cache.sqlite", load_variant=load_variant)
    assert again.score(requests) == [JudgeScore(s.score, s.mass, cached=True) for s in first]
    assert loads == ["chat"] and again.stats.calls == 0 and again.stats.cache_hits == 3


def test_local_judge_reads_integer_tokens(tiny_loaded, monkeypatch):
    """Force the tiny model's next-token distribution onto digit tokens: the same scoring path applies."""
    import torch

    loaded = tiny_loaded("llama")
    tokenizer = loaded.tokenizer
    digit_ids = {d: tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}
    digit_ids = {d: i for d, i in digit_ids.items() if isinstance(i, int) and i != tokenizer.unk_token_id}
    if "7" not in digit_ids or "8" not in digit_ids:
        pytest.skip("the tiny tokenizer has no single-digit tokens")

    class Biased(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids)
            logits = torch.full_like(out.logits, -30.0)
            logits[..., digit_ids["7"]] = math.log(0.6)
            logits[..., digit_ids["8"]] = math.log(0.4)
            out.logits = logits
            return out

    import dataclasses

    biased = dataclasses.replace(loaded, model=Biased(loaded.model))
    judge = make_judge(JudgeSpec(model="local:biased"), cache_path=None, load_variant=lambda name: biased)
    [score] = judge.score([JudgeRequest("trait", "q", "a")])
    assert score.score == pytest.approx(7.4, abs=1e-3) and score.mass == pytest.approx(1.0, abs=1e-3)


def test_local_needs_a_loader():
    with pytest.raises(TraitflowError, match="local judge needs"):
        make_judge(JudgeSpec(model="local:chat"), None)
    with pytest.raises(TraitflowError, match="needs a variant name"):
        make_judge(JudgeSpec(model="local:"), None, load_variant=lambda v: None)


def test_local_unknown_variant_is_a_traitflow_error():
    def load_variant(name):
        raise TraitflowError(f"unknown variant {name!r}")

    judge = make_judge(JudgeSpec(model="local:nope"), None, load_variant=load_variant)
    with pytest.raises(TraitflowError, match="unknown variant 'nope'"):
        judge.score([JudgeRequest("trait", "q", "a")])
