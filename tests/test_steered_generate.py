"""Steered generation: coefficient 0 is the unsteered model, K configurations in one batch equal
each alone, the KV-cache path equals a full recompute, LoRA, and hooks removed on errors."""

import threading

import pytest
import torch

from traitflow.model.arch import final_norm
from traitflow.model.chat import prompt_ids
from traitflow.model.generate import generate
from traitflow.model.hooks import add_hooks, model_lock
from traitflow.steer import Ablate, Cap, Steer, intervene, steered_generate

HIDDEN = 64
TEXTS = [
    ("Hello there", None),
    ("Tell me about cats, dogs and trains. Be formal.", "Be cheerful."),
    ("Hi", None),
    ("How are you today?", "Be gloomy."),
]


def _prompts(loaded) -> list[list[int]]:
    return [prompt_ids(loaded, text, system) for text, system in TEXTS]


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))


def _ids(gens) -> list[list[int]]:
    return [g.response_ids for g in gens]


def _hook_counts(model) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _configs(strength: float = 1.0) -> list[tuple]:
    """Different layers, coefficients and position sets, incl. 0, an Ablate, a Cap and a composition."""
    v, w = _vec(1), _vec(2)
    s = strength
    return [
        (),
        (Steer(v, 1, 0.0),),
        (Steer(v, 0, 6.0 * s, "response"),),
        (Steer(w, 2, -8.0 * s, "all"),),
        (Steer(v, 1, 8.0 * s, "prompt"),),
        (Ablate(w),),
        (Cap(v, 1, floor=-0.5, ceiling=0.5),),
        (Steer(w, 1, 5.0 * s), Cap(w, 1, ceiling=2.0), Steer(v, 2, -4.0 * s, "all")),
    ]


# The tiny random Gemma2 repeats one token whatever the prompt (logit soft-capping, large
# embedding scale): it takes coefficients well above its residual norm (~20) to move it.
STRENGTH = {"llama": 1.0, "gpt2": 1.0, "gemma2": 8.0}
MIN_CHANGED = {"llama": 6, "gpt2": 6, "gemma2": 2}  # of the 6 non-zero configurations


def test_coefficient_zero_is_the_unsteered_model(tiny_loaded):
    loaded = tiny_loaded("llama")
    prompts = _prompts(loaded)
    v = _vec(0)
    plain = generate(loaded, prompts, max_new_tokens=12)
    zero = [(Steer(v, layer, 0.0, positions),) for layer in range(loaded.n_layers) for positions in ("all", "prompt", "response")]
    zero.append(tuple(Steer(v, layer, 0.0, "all") for layer in range(loaded.n_layers)))
    rows = [k for k in range(len(zero)) for _ in prompts]
    out = steered_generate(loaded, prompts * len(zero), zero, rows, max_new_tokens=12, batch_size=7)
    for k in range(len(zero)):
        assert out[k * len(prompts) : (k + 1) * len(prompts)] == plain  # same ids, text, format
    assert steered_generate(loaded, prompts, [()], [0] * len(prompts), max_new_tokens=12) == plain


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_batched_configs_equal_each_config_alone(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    prompts = _prompts(loaded)
    configs = _configs(STRENGTH[arch])
    rows = [k for k in range(len(configs)) for _ in prompts]
    batched = steered_generate(loaded, prompts * len(configs), configs, rows, max_new_tokens=10, batch_size=len(rows))
    plain = _ids(generate(loaded, prompts, max_new_tokens=10))
    changed = 0
    for k, config in enumerate(configs):
        alone = _ids(steered_generate(loaded, prompts, [config], [0] * len(prompts), max_new_tokens=10))
        assert _ids(batched[k * len(prompts) : (k + 1) * len(prompts)]) == alone, f"config {k}"
        changed += alone != plain
    assert _ids(batched[: 2 * len(prompts)]) == plain + plain  # () and coefficient 0
    assert changed >= MIN_CHANGED[arch]  # the steers really steer (so a mixed-up row would show)


@pytest.mark.parametrize("positions", ["prompt", "response", "all"])
def test_kv_cache_generation_equals_full_recompute(positions, tiny_loaded):
    """Greedy with the KV cache (prefill + decode steps) == greedy re-running the whole sequence
    each step with no cache, where positions >= the last prompt token are the response set."""
    loaded = tiny_loaded("llama")
    prompts = _prompts(loaded)
    config = (Steer(_vec(3), 1, 6.0, positions), Steer(_vec(4), 2, -3.0, positions))
    n_new = 8
    got = _ids(steered_generate(loaded, prompts, [config], [0] * len(prompts), max_new_tokens=n_new))
    eos = set(loaded.eos_token_ids)
    for prompt, response in zip(prompts, got, strict=True):
        ids = list(prompt)
        with intervene(loaded, [config], [0], [len(prompt)]) as state, torch.inference_mode():
            for _ in range(n_new):
                state.reset()  # a fresh sequence each time: no cache
                token = int(loaded.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
                if token in eos:
                    break
                ids.append(token)
        assert ids[len(prompt) :] == response
    plain = _ids(generate(loaded, prompts, max_new_tokens=n_new))
    if positions != "prompt":
        # the last prompt position is a response position: the very first token is steered
        assert any(a[:1] != b[:1] for a, b in zip(got, plain, strict=True))
    assert got != plain


def test_under_a_lora_wrapper(tiny_loaded, tiny_lora_dir):
    tiny_lora_dir("llama")
    loaded = tiny_loaded("llama", lora="loras/llama")
    assert hasattr(loaded.model, "get_base_model")
    prompts = _prompts(loaded)
    plain = generate(loaded, prompts, max_new_tokens=8)
    configs = [(Steer(_vec(5), 1, 0.0),), (Steer(_vec(5), 1, 8.0, "all"),), (Ablate(_vec(6)),)]
    rows = [k for k in range(len(configs)) for _ in prompts]
    before = _hook_counts(loaded.model)
    out = steered_generate(loaded, prompts * 3, configs, rows, max_new_tokens=8, batch_size=12)
    assert _hook_counts(loaded.model) == before
    assert out[: len(prompts)] == plain
    assert _ids(out[len(prompts) : 2 * len(prompts)]) != _ids(plain)
    for k in (1, 2):
        alone = steered_generate(loaded, prompts, [configs[k]], [0] * len(prompts), max_new_tokens=8)
        assert _ids(out[k * len(prompts) : (k + 1) * len(prompts)]) == _ids(alone)


def test_hooks_removed_when_generation_raises(tiny_loaded):
    loaded = tiny_loaded("llama")
    prompts = _prompts(loaded)
    before = _hook_counts(loaded.model)
    calls = []

    def interrupt(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:  # mid-generation, after the prefill and a decode step
            raise KeyboardInterrupt

    with add_hooks([(final_norm(loaded.model), interrupt)]):
        with pytest.raises(KeyboardInterrupt):
            steered_generate(loaded, prompts, [(Steer(_vec(7), 1, 3.0), Ablate(_vec(8)))], [0] * 4, max_new_tokens=8)
    assert _hook_counts(loaded.model) == before
    got = []

    def try_lock():
        lock = model_lock(loaded.model)
        got.append(lock.acquire(blocking=False))
        if got[-1]:
            lock.release()

    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert got == [True]  # the lock was released too


def test_argument_checks(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(ValueError, match="config_of_prompt"):
        steered_generate(loaded, [[5, 6]], [()], [0, 0], max_new_tokens=2)
    with pytest.raises(ValueError, match="out of range"):
        steered_generate(loaded, [[5, 6]], [()], [1], max_new_tokens=2)
    with pytest.raises(ValueError, match="no tokens"):
        steered_generate(loaded, [[]], [()], [0], max_new_tokens=2)
    assert steered_generate(loaded, [], [()], [], max_new_tokens=2) == []
