"""Incremental runs on the toy demo, side by side in one session: a full `traitflow run demo
--force`, a no-op re-run with nothing changed, and a re-run after editing one of three traits;
then the full run and the one-trait edit again with `traitflow serve` up (models, torch and the
chart renderer warm in it).

Each is a real `traitflow run` subprocess (imports, Dagster instance, model loads included) on a
copy of the repo's specs and datasets, with its own DAGSTER_HOME. Targets (issue "Incremental by
default"): no-op < 5 s and <= 0.1x the full run; one-trait edit <= 0.5x the full run.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(root: Path, env: dict, *extra: str) -> float:
    cmd = [str(BIN / "traitflow"), "run", "demo", "--root", str(root), *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - started


def _edit_one_trait(root: Path, word: str) -> None:
    path = root / "datasets/traits/toy/optimism/positive.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"prompt": "', f'"prompt": "{word}, ', 1)
    path.write_text("\n".join(lines) + "\n")


def start_server(root: Path, env: dict, variants: str = "chat,pessimist") -> tuple[subprocess.Popen, list[str]]:
    """`traitflow serve` on `root`, returned once it serves (its models loaded), with the list its
    output lines keep arriving in (read by a thread, so a chatty server never blocks on a full pipe)."""
    server = subprocess.Popen([str(BIN / "traitflow"), "serve", "--root", str(root), "--variants", variants, "--port", "0"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    for line in server.stdout:
        lines.append(line)
        if line.startswith("serving"):
            threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
            return server, lines
    raise RuntimeError("traitflow serve did not start:\n" + "".join(lines))


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=60)


def _scenario(tmp: Path, served: bool) -> tuple[float, float, float]:
    """On a fresh copy: a full run, a no-op re-run, and a re-run after editing one trait (seconds)."""
    root, home = tmp / "proj", tmp / "home"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets")
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = dict(os.environ, DAGSTER_HOME=str(home))
    env.pop("TRAITFLOW_STORAGE", None)
    env.pop("TRAITFLOW_NO_SERVER", None)
    server = start_server(root, env)[0] if served else None
    try:
        full = _run(root, env, "--force")
        noop = _run(root, env)
        _edit_one_trait(root, "Honestly")
        return full, noop, _run(root, env)
    finally:
        if server is not None:
            stop_server(server)


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        full, noop, one_trait = _scenario(Path(tmp) / "local", served=False)
        served_full, _, served_one_trait = _scenario(Path(tmp) / "served", served=True)
    return [
        {"name": "incremental: full demo run (--force)", "value": full, "unit": "s", "target": "reference"},
        {"name": "incremental: no-op re-run", "value": noop, "unit": "s", "target": "< 5 s"},
        {"name": "incremental: no-op / full", "value": noop / full, "unit": "x", "target": "<= 0.1"},
        {"name": "incremental: one of three traits edited / full", "value": one_trait / full, "unit": "x",
         "target": "<= 0.5 (fixed per-process costs dominate the toy run; see the served line)"},
        {"name": "incremental, traitflow serve up: full demo run", "value": served_full, "unit": "s", "target": "reference"},
        {"name": "incremental, traitflow serve up: one trait edited / full", "value": served_one_trait / served_full,
         "unit": "x", "target": "<= 0.5"},
    ]


if __name__ == "__main__":
    for entry in run():
        print(entry)
