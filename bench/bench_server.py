"""The warm model server: `dagster asset materialize` of one partition (the toy demo's
`activations` for toy/optimism|chat), without and then with `traitflow serve` up, side by side.

Without a server each `dagster asset materialize` process imports torch and transformers and loads
the model; with one, its step only asks the server, which holds the model warm. Target (issue
"Storage at scale, a warm model server…"): with the server far below without (the model here is
the 6-layer toy, so the load it saves is small; on a real model it is minutes).
"""

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_incremental import BIN, REPO, start_server, stop_server

SELECT, PARTITION = "demo/activations", "toy/optimism|chat"


def _materialize(env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "definitions", "--select", SELECT,
                           "--partition", PARTITION], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - started


def run(repeats: int = 3) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "proj", Path(tmp) / "home"
        shutil.copytree(REPO / "specs", root / "specs")
        shutil.copytree(REPO / "datasets", root / "datasets")
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = dict(os.environ, DAGSTER_HOME=str(home), TRAITFLOW_ROOT=str(root))
        env.pop("TRAITFLOW_STORAGE", None)
        env.pop("TRAITFLOW_NO_SERVER", None)
        done = subprocess.run([str(BIN / "traitflow"), "run", "demo", "--root", str(root), "--stages", "generation",
                               "--traits", "toy/optimism"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        local, served = [], []
        server, said = start_server(root, env, "chat")
        try:
            for _ in range(repeats):  # interleaved: the same machine load for both
                served.append(_materialize(env))
                local.append(_materialize(dict(env, TRAITFLOW_NO_SERVER="1")))
        finally:
            stop_server(server)
        ran_there = sum("stage extraction.run_activations" in line and line.rstrip().endswith("done") for line in said)
        if ran_there != repeats:
            raise RuntimeError(f"the server ran {ran_there} of the {repeats} served steps:\n" + "".join(said))
    local_s, served_s = statistics.median(local), statistics.median(served)
    return [
        {"name": "server: dagster asset materialize, model loaded in the step", "value": local_s, "unit": "s", "target": "reference"},
        {"name": "server: dagster asset materialize, traitflow serve up", "value": served_s, "unit": "s", "target": "reference"},
        {"name": "server: served / local", "value": served_s / local_s, "unit": "x", "target": "far below 1"},
    ]


if __name__ == "__main__":
    for entry in run():
        print(entry)
