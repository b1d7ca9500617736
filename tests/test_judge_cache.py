"""The judge's SQLite cache: a re-run or a re-score never pays twice (counted at the server)."""

import math
import sqlite3
import threading

import pytest

from tests.judge_server import Behaviour, JudgeServer, judge_server_fixture  # noqa: F401
from traitflow.judge import Completion, JudgeCache, JudgeRequest, cache_key, coherence_request, make_judge
from traitflow.judge.base import score_from_completion
from traitflow.specs.models import JudgeSpec

FAKE_KEY = "sk-test-not-a-real-key-0123456789"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def spec_for(server: JudgeServer, **fields) -> JudgeSpec:
    values = dict(model="openai/judge-test", api_base=server.url, timeout_s=5.0, max_retries=1, backoff_s=0.01)
    values.update(fields)
    return JudgeSpec(**values)


REQUESTS = [
    JudgeRequest("trait", "How is chess?", "Bright!", "demo/optimism", "Optimism."),
    JudgeRequest("vetting", "Cheer me up.", "Great news: chess", "demo/optimism", "Optimism."),
    coherence_request("How is chess?", "Bright!"),
]


# --------------------------------------------------------------------------- the key
def test_key_covers_model_endpoint_template_prompt_not_secrets():
    base = cache_key("openai/a", "trait/v1", "prompt", {"max_tokens": 4})
    assert base == cache_key("openai/a", "trait/v1", "prompt", {"max_tokens": 4})
    assert (
        len(
            {
                base,
                cache_key("openai/b", "trait/v1", "prompt", {"max_tokens": 4}),
                cache_key("openai/a", "trait/v2", "prompt", {"max_tokens": 4}),
                cache_key("openai/a", "trait/v1", "prompt!", {"max_tokens": 4}),
                cache_key("openai/a", "trait/v1", "prompt", {"max_tokens": 5}),
                cache_key("openai/a", "trait/v1", "prompt", {"max_tokens": 4}, endpoint="http://h:8000/v1"),
                cache_key("openai/a", "trait/v1", "prompt", {"max_tokens": 4}, endpoint="http://h:8001/v1"),
                cache_key("openai/a", "trait/v1", "prompt", {"max_tokens": 4}, endpoint="http://h:8000"),
            }
        )
        == 8
    )
    # userinfo, query string, fragment, a trailing slash and the case of scheme and host are not the endpoint
    one = cache_key("openai/a", "trait/v1", "prompt", endpoint="http://h:8000/v1")
    for spelling in ("http://bob:pw@h:8000/v1", "http://h:8000/v1/?key=abc#frag", "HTTP://H:8000/v1"):
        assert cache_key("openai/a", "trait/v1", "prompt", endpoint=spelling) == one


def test_roundtrip_wal_and_concurrent_reader(tmp_path):
    path = tmp_path / "nested" / "cache.sqlite"
    cache = JudgeCache(path)
    reply = Completion(text="70", top_logprobs=(("70", math.log(0.5)), ("80", math.log(0.3))))
    assert cache.get("k") is None
    cache.put("k", "openai/a", "trait/v1", reply)
    assert cache.get("k") == reply and len(cache) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    errors: list[BaseException] = []

    def reader():
        try:
            other = JudgeCache(path)
            for _ in range(200):
                assert other.get("k") == reply
            other.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        cache.put(f"w{i}", "openai/a", "trait/v1", reply)
    for t in threads:
        t.join()
    assert not errors and len(cache) == 201
    cache.close()


def test_raw_reply_is_stored_so_thresholds_can_change(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    cache.put("k", "m", "trait/v1", Completion(text="70", top_logprobs=(("70", math.log(0.2)),)))
    reply = cache.get("k")
    assert score_from_completion(reply, 0, 100, 0.25)[0] is None
    assert score_from_completion(reply, 0, 100, 0.1)[0] == pytest.approx(70.0)


# --------------------------------------------------------------------------- over HTTP
def test_rescore_and_rerun_make_no_http_calls(judge_server, tmp_path, monkeypatch):
    judge_server.default = Behaviour(distribution={"70": 0.5, "80": 0.3, "foo": 0.2})
    path = tmp_path / "judge_cache.sqlite"
    judge = make_judge(spec_for(judge_server), cache_path=path)
    first = judge.score(REQUESTS)
    assert judge_server.count == 4  # trait, vetting, coherence + relevance
    assert not any(s.cached for s in first) and judge.stats.cache_hits == 0

    again = judge.score(REQUESTS)  # re-score
    assert judge_server.count == 4
    assert [(s.score, s.mass) for s in again] == [(s.score, s.mass) for s in first]
    assert all(s.cached for s in again) and judge.stats.cache_hits == 4 and judge.stats.calls == 4

    rerun = make_judge(spec_for(judge_server), cache_path=path)  # another process, same judge
    assert [(s.score, s.mass) for s in rerun.score(REQUESTS)] == [(s.score, s.mass) for s in first]
    assert judge_server.count == 4 and rerun.stats.calls == 0 and rerun.stats.cache_hits == 4

    monkeypatch.delenv("OPENAI_API_KEY")  # a fully cached re-score needs no key
    keyless = make_judge(spec_for(judge_server), cache_path=path)
    assert [s.score for s in keyless.score(REQUESTS)] == [s.score for s in first] and keyless.stats.calls == 0
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)

    other_model = make_judge(spec_for(judge_server, model="openai/another-judge"), cache_path=path)
    other_model.score(REQUESTS[:1])
    assert judge_server.count == 5 and other_model.stats.cache_hits == 0


def test_another_server_is_asked_not_served_from_the_cache(judge_server, tmp_path):
    """Same model string, same prompts, one cache file: a second server's scores are its own."""
    path = tmp_path / "judge_cache.sqlite"
    judge_server.default = Behaviour(distribution={"70": 1.0})
    assert [s.score for s in make_judge(spec_for(judge_server), cache_path=path).score(REQUESTS[:2])] == [70.0, 70.0]
    assert judge_server.count == 2

    with JudgeServer() as other:
        other.default = Behaviour(distribution={"20": 1.0})
        moved = make_judge(spec_for(other), cache_path=path)
        assert [s.score for s in moved.score(REQUESTS[:2])] == [20.0, 20.0]
        assert other.count == 2 and moved.stats.cache_hits == 0
        assert [s.score for s in moved.score(REQUESTS[:2])] == [20.0, 20.0] and other.count == 2  # now cached, per server

    # the same server under another spelling (no /v1: the server also answers /chat/completions) asks again
    unversioned = make_judge(spec_for(judge_server, api_base=f"http://127.0.0.1:{judge_server.port}"), cache_path=path)
    unversioned.score(REQUESTS[:2])
    assert judge_server.count == 4 and judge_server.paths[-1] == "/chat/completions" and unversioned.stats.cache_hits == 0
    assert make_judge(spec_for(judge_server), cache_path=path).score(REQUESTS[:2])[0].cached  # the first is still there


def test_endpoint_from_the_environment_counts(judge_server, tmp_path, monkeypatch):
    """Without api_base, OPENAI_BASE_URL picks the server (as in litellm) and is part of the key."""
    path = tmp_path / "judge_cache.sqlite"
    judge_server.default = Behaviour(distribution={"70": 1.0})
    monkeypatch.setenv("OPENAI_BASE_URL", judge_server.url)
    first = make_judge(spec_for(judge_server, api_base=None), cache_path=path)
    assert first.score(REQUESTS[:1])[0].score == 70.0 and judge_server.count == 1
    assert first.endpoint == judge_server.url

    with JudgeServer() as other:
        other.default = Behaviour(distribution={"20": 1.0})
        monkeypatch.setenv("OPENAI_BASE_URL", other.url)
        second = make_judge(spec_for(other, api_base=None), cache_path=path)
        assert second.score(REQUESTS[:1])[0].score == 20.0 and other.count == 1 and second.stats.cache_hits == 0


def test_impossible_stored_logprobs_are_a_miss(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    for value in (float("nan"), float("inf"), 3.0, -1e6):
        cache.put("k", "m", "trait/v1", Completion(text="70", top_logprobs=(("70", value),)))
        assert cache.get("k") is None
    cache.put("k", "m", "trait/v1", Completion(text="70", top_logprobs=(("70", -0.1),)))
    assert cache.get("k") is not None


def test_no_confident_answer_is_cached_failures_are_not(judge_server, tmp_path):
    judge_server.default = Behaviour(distribution={"I": 0.9, "50": 0.1})
    judge_server.rule("FAILS", Behaviour(fail_first=2))
    path = tmp_path / "judge_cache.sqlite"
    judge = make_judge(spec_for(judge_server, max_retries=1, max_failure_rate=0.5), cache_path=path)
    requests = [JudgeRequest("trait", "q", "unsure"), JudgeRequest("trait", "q", "FAILS")]
    assert [s.score for s in judge.score(requests)] == [None, None]
    assert judge_server.count == 3 and judge.stats.errors == 1 and judge.stats.none_count == 2

    # the unsure reply comes from the cache; the failed one is asked again (and now succeeds)
    second = judge.score(requests)
    assert second[0].cached and second[0].score is None and second[0].mass == pytest.approx(0.1)
    assert second[1].score == 50.0 and not second[1].cached
    assert judge_server.count == 4


def test_keywords_judge_bypasses_the_cache(tmp_path):
    path = tmp_path / "judge_cache.sqlite"
    judge = make_judge(JudgeSpec(model="keywords"), cache_path=path)
    judge.score([coherence_request("q", "A fine answer.")])
    assert judge.stats.cache_hits == 0 and not path.exists()
