"""Definition-load time: a generated experiment with 1,000 traits × 10 variants × 10 prompt sets (target < 3 s).

Measured in a fresh interpreter, as Dagster does when it loads a code location: import the
definitions module, build the asset graph from the specs. Also checks torch stays unimported.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_TRAITS, N_VARIANTS, N_PROMPT_SETS = 1000, 10, 10

LOADER = """
import os, sys, time, json
t0 = time.perf_counter()
import definitions
defs = definitions.defs
n_assets = len(list(defs.assets))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "assets": n_assets, "torch_imported": "torch" in sys.modules}))
"""


def make_project(root: Path) -> None:
    for i in range(N_TRAITS):
        folder = root / "datasets" / "traits" / "gen" / f"trait{i:03d}"
        folder.mkdir(parents=True)
        lines = [json.dumps({"prompt": f"question {j}", "system_prompt": f"be trait {i}"}) for j in range(20)]
        (folder / "positive.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "negative.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "definition.txt").write_text(f"Trait {i}.\n")
        (folder / "steering.json").write_text(json.dumps({"questions": ["q1", "q2"]}))
    (root / "datasets" / "inference" / "gen").mkdir(parents=True)
    for k in range(N_PROMPT_SETS):
        (root / "datasets" / "inference" / "gen" / f"prompts{k}.json").write_text(
            json.dumps({"prompts": [{"id": j, "text": f"question {j}"} for j in range(20)]}))
    (root / "specs" / "experiments").mkdir(parents=True)
    variants = "\n".join(f"  v{k}: {{model: org/model-{k}}}" for k in range(N_VARIANTS))
    (root / "specs" / "experiments" / "big.yaml").write_text(
        f"name: big\nvariants:\n{variants}\ntraits: [gen/*]\n"
        f"inference: {{prompt_sets: [{', '.join(f'gen/prompts{k}' for k in range(N_PROMPT_SETS))}]}}\n"
    )


def run() -> list[dict]:
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        make_project(Path(tmp))
        env = {"TRAITFLOW_ROOT": tmp, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)}
        times = []
        for _ in range(3):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", LOADER], cwd=repo, env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times.append((wall, result))
    wall, result = sorted(times, key=lambda t: t[0])[1]
    return [
        {"name": f"definitions load, {N_TRAITS} traits x {N_VARIANTS} variants x {N_PROMPT_SETS} prompt sets (wall)",
         "value": wall,
         "unit": "s", "target": "< 3", "detail": result},
        {"name": "  of which import definitions + build_defs", "value": result["seconds"], "unit": "s", "target": "< 3"},
        {"name": "  torch imported while loading definitions (0/1)", "value": float(result["torch_imported"]),
         "unit": "bool", "target": "0"},
    ]


if __name__ == "__main__":
    print(run())
