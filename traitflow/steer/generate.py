"""Steered generation: several intervention configurations mixed in one batched ``generate``.

Each prompt carries the index of its configuration. Prompts are grouped by length (as
:func:`traitflow.model.generate.generate` does), and every batch — whatever mix of
configurations it holds — runs as one greedy ``generate`` call under :func:`intervene`, each
row with its own configuration. The result for a prompt is the same as running its
configuration alone; a configuration of coefficient-0 steers (or ``()``) gives exactly the
unsteered model's tokens.

Example:
    >>> v = vectors["optimism"][6]
    >>> configs = [(), (Steer(v, layer=3, coefficient=8.0),), (Steer(v, layer=3, coefficient=-8.0),)]
    >>> gens = steered_generate(loaded, [ids] * 3, configs, config_of_prompt=[0, 1, 2], max_new_tokens=24)
    >>> [g.text for g in gens]
"""

from collections.abc import Callable, Sequence
from typing import Any

from traitflow.model.generate import Generation, generate
from traitflow.model.hooks import model_lock
from traitflow.steer.interventions import Intervention, intervene

__all__ = ["steered_generate"]


def steered_generate(
    loaded: Any,
    prompts: Sequence[Sequence[int]],
    configs: Sequence[Sequence[Intervention]],
    config_of_prompt: Sequence[int],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Greedy generation for each prompt under its own intervention configuration.

    Args:
        loaded: a LoadedModel.
        prompts: prompt token ids.
        configs: intervention configurations (tuples of Steer / Ablate / Cap; ``()`` = none).
        config_of_prompt: for each prompt, the index of its configuration in ``configs``.
            To run K configurations on the same prompts, repeat the prompts K times.
        max_new_tokens: upper bound on response length.
        batch_size: rows per ``generate`` call; rows of different configurations share a batch.
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        One :class:`~traitflow.model.generate.Generation` per prompt, in input order (same
        format as :func:`traitflow.model.generate.generate`: eos cut off, decoded text).
    """
    n = len(prompts)
    if len(config_of_prompt) != n:
        raise ValueError(f"config_of_prompt has {len(config_of_prompt)} entries for {n} prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i, k in enumerate(config_of_prompt):
        if not 0 <= int(k) < len(configs):
            raise ValueError(f"prompt {i}: configuration index {k} is out of range (have {len(configs)} configurations)")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    if n == 0:
        return []

    # Sorted by length, so each chunk is already in the (stable, by-length) order that
    # `generate` lays its batch out in: row b of the batch is chunk[b].
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * n
    done = 0
    with model_lock(loaded.model):
        for start in range(0, n, batch_size):
            chunk = order[start : start + batch_size]
            chunk_prompts = [list(prompts[i]) for i in chunk]
            rows = [int(config_of_prompt[i]) for i in chunk]
            with intervene(loaded, configs, rows, [len(p) for p in chunk_prompts]):
                gens = generate(loaded, chunk_prompts, max_new_tokens=max_new_tokens, batch_size=len(chunk))
            for i, gen in zip(chunk, gens, strict=True):
                results[i] = gen
            done += len(chunk)
            if progress is not None:
                progress(done, n)
    return results  # type: ignore[return-value]
