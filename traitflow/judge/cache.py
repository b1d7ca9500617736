"""A SQLite cache of judge replies: a re-run or a re-score never pays twice.

Key: sha256 over the judge model string (``openai/gpt-4.1-mini``, ``local:chat``), the endpoint
identity (the ``api_base`` without userinfo, query string or fragment:
:func:`~traitflow.judge.base.endpoint_identity`; ``""`` for the provider's default), the prompt
template id and version (``trait/v1``), the exact filled prompt, and the sampling parameters
(temperature, max_tokens, top_logprobs). Two servers may serve different models under one
model string, so one server's replies are never served for another (another spelling of the
same server, ``localhost`` for ``127.0.0.1``, asks again once). API keys and URL secrets never
enter the key or the file.

Value: the raw reply (text and first-token top log-probabilities), not the score, so a score is
recomputed on every read and a change of threshold or parsing needs no new calls. Failed calls
and malformed replies are never stored; replies with no confident answer are (asking again would
give the same). A stored reply that does not read back as a sane one (unreadable JSON,
impossible log-probabilities) is a miss.

The file is in WAL mode with a busy timeout, so several processes (Dagster runs) can read it
while one writes. One connection per cache object, shared by threads under a lock.

Example:
    >>> cache = JudgeCache(Path("experiments/demo/judge_cache.sqlite"))
    >>> key = cache_key("openai/gpt-4.1-mini", "trait/v1", prompt, endpoint="https://api.openai.com/v1")
    >>> cache.get(key)  # Completion or None
"""

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from traitflow.errors import TraitflowError
from traitflow.judge.base import Completion, endpoint_identity, logprob_problem

__all__ = ["CACHE_FORMAT", "JudgeCache", "cache_key"]

CACHE_FORMAT = 2  # bump when the key's composition or the stored value changes (2: the endpoint)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    reply TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(model: str, template: str, prompt: str, params: dict | None = None, *, endpoint: str | None = None) -> str:
    """sha256 hex of (format, model, endpoint identity, template id, filled prompt, sampling parameters).

    ``endpoint`` may be the raw ``api_base``: only its identity (no userinfo, query or fragment) counts.
    """
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": model,
            "endpoint": endpoint_identity(endpoint),
            "template": template,
            "prompt": prompt,
            "params": params or {},
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Judge replies in a SQLite file (created with its folder on first use)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise TraitflowError(f"judge cache {self.path}: cannot open ({exc})") from None

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._conn.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            completion = Completion.from_json(json.loads(row[0]))
        except (ValueError, TypeError, AttributeError):
            return None  # an unreadable row is a miss; the next put replaces it
        if logprob_problem(completion.top_logprobs) is not None:
            return None  # impossible log-probabilities (written by hand or by an old version): a miss too
        return completion

    def put(self, key: str, model: str, template: str, completion: Completion) -> None:
        reply = json.dumps(completion.to_json(), ensure_ascii=False)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO replies (key, model, template, reply, created) VALUES (?, ?, ?, ?, ?)",
                (key, model, template, reply, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
