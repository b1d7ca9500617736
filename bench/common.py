"""What the benchmarks share: the random 30M Llama config, the toy model path, and side-by-side timing."""

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = "datasets/models/toy-chat"
# A random ~30M-parameter Llama: the "bigger than toy" model every benchmark measures too.
LLAMA_30M = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=4096,
    tie_word_embeddings=False,
)


def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], device, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, timed round-robin in the same rounds (so load drifts hit all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for key, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@contextmanager
def bench_threads() -> Iterator[int]:
    """On CPU, torch runs with TRAITFLOW_BENCH_THREADS intra-op threads (default 1) for every variant
    measured, and the caller's setting comes back afterwards."""
    import torch

    from traitflow.model.loading import resolve_device

    before = torch.get_num_threads()
    if resolve_device("auto").type == "cpu":
        torch.set_num_threads(int(os.environ.get("TRAITFLOW_BENCH_THREADS", "1")))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
