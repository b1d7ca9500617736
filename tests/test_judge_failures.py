"""The judge fails loudly and honestly, and never leaks secrets or mixes endpoints.

Everything runs through litellm over HTTP against the test server in ``tests/judge_server.py``:
failed batches raise one-line ``TraitflowError``s naming the model, the endpoint (secrets masked)
and the cause; partial failures above ``max_failure_rate`` raise; ``deadline_s`` bounds a batch;
impossible log-probabilities are malformed replies; URL secrets never reach a message or a log.
"""

import concurrent.futures
import logging
import math
import sqlite3

import pytest

from tests.judge_server import Behaviour, JudgeServer, judge_server_fixture  # noqa: F401
from traitflow.errors import TraitflowError
from traitflow.judge import JudgeRequest, coherence_request, make_judge, redact, redact_url, score_from_logprobs
from traitflow.judge.base import endpoint_identity
from traitflow.judge.llm import import_litellm
from traitflow.specs.models import JudgeSpec

FAKE_KEY = "sk-test-not-a-real-key-0123456789"
GUARD_S = 20.0  # the longest any test here waits for a batch that should end within a second: a hang guard, not a timing


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


@pytest.fixture(autouse=True, scope="module")
def litellm_imported():
    """Import litellm before any batch: its first import (seconds) would otherwise count against the small deadlines here."""
    import_litellm()


def spec_for(server: JudgeServer, **fields) -> JudgeSpec:
    values = dict(model="openai/judge-test", api_base=server.url, timeout_s=5.0, max_retries=1, backoff_s=0.01)
    values.update(fields)
    return JudgeSpec(**values)


def requests_for(*answers: str) -> list[JudgeRequest]:
    return [JudgeRequest("trait", "q", answer) for answer in answers]


def failing(judge, requests) -> str:
    """The one-line message of the TraitflowError that scoring ``requests`` raises (within GUARD_S)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(judge.score, requests)
        with pytest.raises(TraitflowError) as info:
            future.result(timeout=GUARD_S)
    message = str(info.value)
    assert "\n" not in message and FAKE_KEY not in message
    return message


def answered(judge, requests) -> list:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(judge.score, requests).result(timeout=GUARD_S)


# --------------------------------------------------------------------------- 1. a batch that fails entirely raises
ALL_FAIL = {
    "http_500": (Behaviour(fail_first=10**6, status=500), {}, "requests failed (HTTP 500: test server failure)", 2),
    "http_503": (Behaviour(fail_first=10**6, status=503), {}, "requests failed (HTTP 503: test server failure)", 2),
    "http_429": (Behaviour(fail_first=10**6, status=429), {}, "requests failed (HTTP 429: test server failure)", 2),
    "rejected_400": (Behaviour(fail_first=10**6, status=400), {}, "requests failed (HTTP 400: test server failure)", 1),
    "html_body": (Behaviour(body="<html>502 Bad Gateway</html>"), {}, "requests failed (malformed reply: ", 2),
    "json_without_choices": (Behaviour(body='{"id": "x", "object": "chat.completion"}'), {}, "(malformed reply: ", 2),
    "empty_choices": (Behaviour(body='{"id": "x", "object": "chat.completion", "choices": []}'), {}, "no choices", 2),
    "timeout": (Behaviour(hang=True), {"timeout_s": 0.3}, "requests failed (timed out after 0.3 s)", 2),
}


@pytest.mark.parametrize("case", list(ALL_FAIL), ids=list(ALL_FAIL))
def test_a_batch_where_every_request_fails_raises(judge_server, case):
    behaviour, fields, cause, tries = ALL_FAIL[case]
    judge_server.default = behaviour
    judge = make_judge(spec_for(judge_server, **fields), cache_path=None)
    message = failing(judge, requests_for("a", "b", "c"))
    assert message.startswith(f"judge openai/judge-test at {judge_server.url}: 3 of 3 requests failed (")
    assert cause in message
    assert judge.stats.errors == 3 and judge.stats.requests == 3
    assert judge_server.count == 3 * tries  # 5xx, 429, timeouts and malformed replies are retried; a 400 is not


def test_dropped_connections_read_as_unreachable(judge_server):
    judge_server.default = Behaviour(drop=True)
    judge = make_judge(spec_for(judge_server), cache_path=None)
    message = failing(judge, requests_for("a", "b"))
    assert message.startswith(f"judge openai/judge-test unreachable at {judge_server.url}: 2 of 2 requests failed (connection")
    assert judge_server.count == 4


def test_a_mix_of_failures_names_each_cause(judge_server):
    judge_server.rule("M500", Behaviour(fail_first=10**6, status=500))
    judge_server.rule("MHTML", Behaviour(body="<html>oops</html>"))
    judge_server.rule("MDROP", Behaviour(drop=True))
    judge_server.rule("MHANG", Behaviour(hang=True))
    judge_server.default = Behaviour(fail_first=10**6, status=400)
    judge = make_judge(spec_for(judge_server, timeout_s=0.3), cache_path=None)
    message = failing(judge, requests_for("M500", "M500", "MHTML", "MDROP", "MHANG", "other"))
    assert message.startswith(f"judge openai/judge-test at {judge_server.url}: 6 of 6 requests failed (")
    assert "(2× HTTP 500: test server failure; " in message  # the most common cause first, with its count
    for cause in (
        "1× HTTP 400: test server failure",
        "1× malformed reply: ",
        "1× connection failed: ",
        "1× timed out after 0.3 s",
    ):
        assert cause in message
    assert judge.stats.errors == 6


def test_no_reply_with_a_number_in_a_whole_batch_raises(judge_server):
    judge_server.default = Behaviour(logprobs=False, text="banana")
    judge = make_judge(spec_for(judge_server), cache_path=None)
    message = failing(judge, requests_for("a", "b", "c"))
    assert message.startswith(f"judge openai/judge-test at {judge_server.url}: no reply to any of 3 requests held a number")
    assert "'banana'" in message
    assert judge.stats.errors == 0 and judge_server.count == 3  # a judgement, not retried

    judge_server.reset()  # the same with log-probabilities that hold no integer at all
    judge_server.default = Behaviour(distribution={"I": 0.7, "The": 0.3})
    assert "held a number" in failing(judge, requests_for("d"))


def test_low_mass_and_single_numberless_replies_are_judgements_not_failures(judge_server):
    judge_server.default = Behaviour(distribution={"I": 0.9, "70": 0.1})  # some mass on an integer, too little
    judge_server.rule("GARBAGE", Behaviour(logprobs=False, text="banana"))
    judge = make_judge(spec_for(judge_server, max_failure_rate=0.0), cache_path=None)  # not one failure allowed
    scores = answered(judge, requests_for("a", "b", "GARBAGE"))
    assert [s.score for s in scores] == [None, None, None]
    assert [s.mass for s in scores] == [pytest.approx(0.1), pytest.approx(0.1), None]
    assert judge.stats.errors == 0 and judge.stats.none_count == 3


# --------------------------------------------------------------------------- 2. partial failures above the rate raise
def test_failure_rate_at_the_limit_passes_and_above_it_raises(judge_server, caplog):
    judge_server.default = Behaviour(distribution={"60": 1.0})
    judge_server.rule("BROKEN", Behaviour(fail_first=10**6, status=502))
    judge = make_judge(spec_for(judge_server), cache_path=None)  # max_failure_rate 0.2 by default
    with caplog.at_level(logging.WARNING, logger="traitflow.judge.llm"):
        scores = answered(judge, requests_for(*[f"ok{i}" for i in range(8)], "BROKEN1", "BROKEN2"))
    assert [s.score for s in scores] == [60.0] * 8 + [None, None]
    assert judge.stats.errors == 2 and judge.stats.none_count == 2
    assert "2 of 10 requests failed (HTTP 502: test server failure)" in caplog.text

    message = failing(judge, requests_for(*[f"ok{i}" for i in range(7)], "BROKEN1", "BROKEN2", "BROKEN3"))
    assert message == (
        f"judge openai/judge-test at {judge_server.url}: 3 of 10 requests failed (HTTP 502: test server failure), "
        "more than judge.max_failure_rate 0.2"
    )


def test_failure_rate_counts_requests_not_calls(judge_server):
    """A coherence request is two calls; a failure of either is one failed request of the batch."""
    judge_server.default = Behaviour(distribution={"90": 1.0})
    judge_server.rule("Reply 1 if the answer engages", Behaviour(fail_first=10**6, status=500))
    judge = make_judge(spec_for(judge_server, max_failure_rate=0.5), cache_path=None)
    batch = [coherence_request("q", "a"), *requests_for("x", "y", "z")]
    scores = answered(judge, batch)
    assert [s.score for s in scores] == [None, 90.0, 90.0, 90.0] and judge.stats.errors == 1


def test_max_failure_rate_zero_fails_on_one_failure(judge_server):
    judge_server.default = Behaviour(distribution={"60": 1.0})
    judge_server.rule("BROKEN", Behaviour(fail_first=10**6, status=500))
    judge = make_judge(spec_for(judge_server, max_failure_rate=0.0), cache_path=None)
    assert "1 of 20 requests failed" in failing(judge, requests_for(*[f"ok{i}" for i in range(19)], "BROKEN"))


# --------------------------------------------------------------------------- 3. the deadline bounds a batch
def test_deadline_stops_a_hanging_server(judge_server):
    judge_server.default = Behaviour(hang=True)
    # without a deadline: 3 tries of 20 s each per request
    judge = make_judge(spec_for(judge_server, timeout_s=20.0, max_retries=2, deadline_s=0.5), cache_path=None)
    message = failing(judge, requests_for("a", "b", "c"))
    assert message == (
        f"judge openai/judge-test at {judge_server.url}: batch of 3 requests not done within judge.deadline_s = 0.5 s "
        "(0 finished)"
    )
    assert judge.stats.errors == 3

    judge_server.reset()  # the judge is still usable afterwards: nothing of the cancelled batch lingers
    judge_server.default = Behaviour(distribution={"40": 1.0})
    assert [s.score for s in answered(judge, requests_for("a"))] == [40.0]


def test_deadline_includes_retries_and_backoff(judge_server):
    judge_server.default = Behaviour(distribution={"60": 1.0})
    judge_server.rule("BROKEN", Behaviour(fail_first=10**6, status=503))
    # the broken request would wait 30 s, 60 s, 120 s between its tries
    judge = make_judge(spec_for(judge_server, max_retries=3, backoff_s=30.0, deadline_s=1.0), cache_path=None)
    message = failing(judge, requests_for("ok1", "ok2", "BROKEN"))
    assert message == (
        f"judge openai/judge-test at {judge_server.url}: batch of 3 requests not done within judge.deadline_s = 1 s "
        "(2 finished; last error: HTTP 503: test server failure)"
    )
    assert judge_server.count == 3  # the broken one was tried once, then the deadline cut its backoff short


# --------------------------------------------------------------------------- 4. impossible log-probabilities
ABSURD = {
    "nan": {"70": math.nan, "80": -1.0},
    "plus_inf": {"70": math.inf, "80": -1.0},
    "minus_inf": {"70": -0.1, "80": -math.inf},
    "positive": {"70": 5.0, "80": -1.0},
    "huge_positive": {"70": 1000.0, "80": -1.0},
    "below_floor": {"70": -0.1, "80": -1e6},
    "sums_above_one": {"70": -0.01, "80": -0.02},
}


@pytest.mark.parametrize("case", list(ABSURD), ids=list(ABSURD))
def test_impossible_logprobs_are_malformed_replies(judge_server, tmp_path, case):
    judge_server.default = Behaviour(raw_logprobs=ABSURD[case], text="70")
    path = tmp_path / "judge_cache.sqlite"
    judge = make_judge(spec_for(judge_server, max_failure_rate=1.0), cache_path=path)  # even "any rate" fails a whole batch
    message = failing(judge, requests_for("a", "b"))
    assert message.startswith(f"judge openai/judge-test at {judge_server.url}: 2 of 2 requests failed (malformed reply: ")
    assert judge_server.count == 4 and judge.stats.errors == 2  # retried, then failed
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 0  # never cached


def test_one_impossible_reply_is_one_failed_request(judge_server):
    judge_server.default = Behaviour(distribution={"70": 0.5, "80": 0.5})
    judge_server.rule("ABSURD", Behaviour(raw_logprobs={"70": 1000.0}))
    judge = make_judge(spec_for(judge_server, max_failure_rate=0.5), cache_path=None)
    scores = answered(judge, requests_for("a", "ABSURD", "b"))
    assert [s.score for s in scores] == [75.0, None, 75.0] and judge.stats.errors == 1


def test_scoring_never_overflows_on_impossible_values():
    top = [("70", 1000.0), ("80", math.nan), ("90", math.inf), ("60", -1e9), ("50", math.log(0.5))]
    assert score_from_logprobs(top, 0, 100, 0.25) == (50.0, pytest.approx(0.5))  # only the sane value counts


# --------------------------------------------------------------------------- 6. secrets never leak
def test_redact_url_and_redact():
    assert redact_url("https://bob:hunter22@proxy.example:8443/v1?key=abc123&region=eu#frag") == (
        "https://***@proxy.example:8443/v1?key=***&region=***"
    )
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact_url(None) == ""
    assert endpoint_identity("HTTP://bob:hunter22@Proxy.Example:8443/v1/?key=abc123#frag") == "http://proxy.example:8443/v1"
    text = "POST http://admin:hunter22@10.0.0.5/v1?token=TOKSECRET99). Retry at admin:hunter22@10.0.0.5 later"
    assert redact(text) == "POST http://***@10.0.0.5/v1?token=***). Retry at ***@10.0.0.5 later"
    assert redact("no route /v1/?key=QSECRET1chat", secrets=["QSECRET1"]) == "no route /v1/?key=***chat"


def test_userinfo_and_query_secrets_in_api_base_never_leak(judge_server, tmp_path, caplog):
    api_base = f"http://alice:s3cretpw@127.0.0.1:{judge_server.port}/v1?api_key=QSECRET123"
    judge = make_judge(spec_for(judge_server, api_base=api_base), cache_path=tmp_path / "judge_cache.sqlite")
    with caplog.at_level(logging.DEBUG, logger="traitflow"):
        message = failing(judge, requests_for("a", "b"))  # httpx refuses credentials in the URL next to a key
    assert message.startswith(f"judge openai/judge-test at http://***@127.0.0.1:{judge_server.port}/v1?api_key=***: ")
    assert judge.endpoint == f"http://127.0.0.1:{judge_server.port}/v1" and judge.model == "openai/judge-test"
    written = message + caplog.text + (tmp_path / "judge_cache.sqlite").read_bytes().decode("utf-8", "replace")
    for secret in ("s3cretpw", "QSECRET123", "alice"):
        assert secret not in written


def test_a_query_secret_echoed_by_the_server_is_masked(judge_server):
    """The query string lands in the request path and the server's 404 echoes it: the judge masks its own secrets."""
    judge = make_judge(spec_for(judge_server, api_base=f"{judge_server.url}/?api_key=QSECRET123"), cache_path=None)
    message = failing(judge, requests_for("a"))
    assert message.startswith(f"judge openai/judge-test at {judge_server.url}/?api_key=***: HTTP 404: no route ")
    assert "QSECRET123" not in message


def test_secrets_in_server_errors_are_masked_in_messages_and_logs(judge_server, caplog):
    leaky = "upstream http://admin:hunter22@10.0.0.5/v1?token=TOKSECRET99 failed"
    judge_server.default = Behaviour(distribution={"60": 1.0})
    judge_server.rule("BROKEN", Behaviour(fail_first=10**6, status=503, error_message=leaky))
    judge = make_judge(spec_for(judge_server), cache_path=None)
    with caplog.at_level(logging.WARNING, logger="traitflow.judge.llm"):
        answered(judge, requests_for(*[f"ok{i}" for i in range(9)], "BROKEN"))  # 1 of 10: a warning
    assert "HTTP 503: upstream http://***@10.0.0.5/v1?token=*** failed" in caplog.text
    message = failing(judge, requests_for("BROKEN"))
    assert message.endswith("1 of 1 requests failed (HTTP 503: upstream http://***@10.0.0.5/v1?token=*** failed)")
    for secret in ("hunter22", "TOKSECRET99"):
        assert secret not in caplog.text and secret not in message
