"""Incremental runs on the toy demo, side by side in one session: a full `traitflow run demo
--force`, a no-op re-run with nothing changed, and a re-run after editing one of three traits.

Each is a real `traitflow run` subprocess (imports, Dagster instance, model loads included) on a
copy of the repo's specs and datasets, with its own DAGSTER_HOME. Targets (issue "Incremental by
default"): no-op < 5 s and <= 0.1x the full run; one-trait edit <= 0.5x the full run.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, env: dict, *extra: str) -> float:
    cmd = [str(Path(sys.executable).parent / "traitflow"), "run", "demo", "--root", str(root), *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - started


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "proj", Path(tmp) / "home"
        shutil.copytree(REPO / "specs", root / "specs")
        shutil.copytree(REPO / "datasets", root / "datasets")
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = dict(os.environ, DAGSTER_HOME=str(home))
        env.pop("TRAITFLOW_STORAGE", None)
        full = _run(root, env, "--force")
        noop = _run(root, env)
        path = root / "datasets/traits/toy/optimism/positive.jsonl"
        lines = path.read_text().splitlines()
        lines[0] = lines[0].replace('"prompt": "', '"prompt": "Honestly, ', 1)
        path.write_text("\n".join(lines) + "\n")
        one_trait = _run(root, env)
    return [
        {"name": "incremental: full demo run (--force)", "value": full, "unit": "s", "target": "reference"},
        {"name": "incremental: no-op re-run", "value": noop, "unit": "s", "target": "< 5 s"},
        {"name": "incremental: no-op / full", "value": noop / full, "unit": "x", "target": "<= 0.1"},
        {"name": "incremental: one of three traits edited / full", "value": one_trait / full, "unit": "x", "target": "<= 0.5"},
    ]


if __name__ == "__main__":
    for entry in run():
        print(entry)
