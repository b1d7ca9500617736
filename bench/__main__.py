"""`make bench`: run every benchmark, print a table, write bench/out/results.json.

Each benchmark module has `run() -> list[dict]` returning entries with `name`, `value`, `unit`,
`target` (and optional `detail`); ratios are measured side by side in one run.

`bench.bench_view` times the research viewer's pages on a 250-trait, 40-layer synthetic experiment
(server over HTTP, and drawn in headless Chromium when playwright and /usr/bin/chromium are there)
and Live chat through the viewer against `traitflow monitor`.
"""

import importlib
import json
import sys
from pathlib import Path

MODULES = ["bench.bench_defs", "bench.bench_incremental", "bench.bench_server", "bench.bench_capture", "bench.bench_extraction", "bench.bench_steering", "bench.bench_monitor", "bench.bench_capability", "bench.bench_view"]
OUT = Path(__file__).resolve().parent / "out" / "results.json"


def main() -> int:
    entries = []
    for name in MODULES:
        module = importlib.import_module(name)
        print(f"running {name} ...", flush=True)
        entries += module.run()
    print()
    print(f"{'benchmark':58} {'value':>10}  {'unit':6} target")
    for e in entries:
        print(f"{e['name']:58} {e['value']:>10.3f}  {e['unit']:6} {e['target']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"\nwrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
