"""Interventions at the forward-pass level: the arithmetic, position sets, ablation, capping,
composition order, per-row configurations, validation and hook hygiene."""

import threading

import pytest
import torch

from traitflow.errors import TraitflowError
from traitflow.model.arch import decoder_layers
from traitflow.model.hooks import add_hooks, left_pad_batch, model_lock, output_tensor, project_tokens
from traitflow.model.loading import load_model
from traitflow.specs.models import ModelSpec
from traitflow.steer import Ablate, Cap, Steer, StepState, intervene

HIDDEN = 64
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17, 18, 19, 20, 21], [22, 23, 24, 25]]


def _vec(seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed)) * scale  # not unit: normalised inside


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _hook_counts(model) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _block_outputs(loaded, prompts, configs=None, row_config=None, use_cache=False, **kwargs):
    """(logits, {layer: block output}) of one left-padded forward, optionally while intervening."""
    batch = left_pad_batch(prompts, loaded.pad_token_id, loaded.device)
    captured: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(loaded.model)

    def grab(layer):
        return lambda m, i, o: captured.__setitem__(layer, output_tensor(o).detach().clone())

    def forward():
        return loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=use_cache,
            **kwargs,
        )

    with torch.inference_mode():
        if configs is None:
            with add_hooks([(b, grab(j)) for j, b in enumerate(blocks)]):
                out = forward()
        else:
            rows = row_config if row_config is not None else [0] * len(prompts)
            with intervene(loaded, configs, rows, [len(p) for p in prompts]):
                # registered after intervene's hooks, so they see the intervened output
                with add_hooks([(b, grab(j)) for j, b in enumerate(blocks)]):
                    out = forward()
    return out, captured, batch


# --------------------------------------------------------------------------- arithmetic and positions
def test_coefficient_zero_forward_is_bit_identical(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = _vec()
    noop = [(Steer(v, 0, 0.0, "all"), Steer(v, 1, 0.0, "prompt"), Steer(v, 2, 0.0, "response"), Cap(v, 1, floor=-1e30))]
    ref, ref_blocks, _ = _block_outputs(loaded, PROMPTS)
    out, blocks, _ = _block_outputs(loaded, PROMPTS, noop)
    assert torch.equal(ref.logits, out.logits)
    for layer in range(loaded.n_layers):
        assert torch.equal(ref_blocks[layer], blocks[layer])


def test_steer_adds_coefficient_times_unit_vector_and_skips_padding(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = _vec(1)
    _, ref, batch = _block_outputs(loaded, PROMPTS)
    _, out, _ = _block_outputs(loaded, PROMPTS, [(Steer(v, 1, 5.0, "all"),)])
    torch.testing.assert_close(ref[0], out[0], rtol=0, atol=0)  # earlier layer untouched
    diff = out[1] - ref[1]
    for row, pad in enumerate(batch.pads):
        assert torch.equal(diff[row, :pad], torch.zeros_like(diff[row, :pad]))  # left padding is never steered
        torch.testing.assert_close(diff[row, pad:], (5.0 * _unit(v)).expand_as(diff[row, pad:]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ("prompt", lambda pad, width: list(range(pad, width))),
        ("response", lambda pad, width: [width - 1]),  # the last prompt position yields the first response token
        ("all", lambda pad, width: list(range(pad, width))),
    ],
)
def test_prefill_position_sets(tiny_loaded, positions, expected):
    loaded = tiny_loaded("llama")
    v = _vec(2)
    _, ref, batch = _block_outputs(loaded, PROMPTS)
    _, out, _ = _block_outputs(loaded, PROMPTS, [(Steer(v, 0, 4.0, positions),)])
    width = batch.input_ids.shape[1]
    changed = (out[0] - ref[0]).abs().amax(-1) > 0
    for row, pad in enumerate(batch.pads):
        assert changed[row].nonzero().flatten().tolist() == expected(pad, width)


def test_decode_step_position_sets(tiny_loaded):
    """Under a KV cache: a decode step is a response position, never a prompt position.

    Block 1's output is captured twice in the same run: by a hook registered before
    intervene's (the raw block output) and one registered after (what the next block sees).
    """
    loaded = tiny_loaded("llama")
    v = _vec(3)
    prompts = PROMPTS[:2]
    batch = left_pad_batch(prompts, loaded.pad_token_id, loaded.device)
    width = batch.input_ids.shape[1]
    block = decoder_layers(loaded.model)[1]
    step_mask = torch.cat([batch.attention_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)

    for positions, decode_steered in [("prompt", False), ("response", True), ("all", True)]:
        raw: list[torch.Tensor] = []
        out: list[torch.Tensor] = []
        with torch.inference_mode(), add_hooks([(block, lambda m, i, o, raw=raw: raw.append(output_tensor(o).clone()))]):
            with intervene(loaded, [(Steer(v, 1, 4.0, positions),)], [0, 0], [len(p) for p in prompts]) as state:
                with add_hooks([(block, lambda m, i, o, out=out: out.append(output_tensor(o).clone()))]):
                    first = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=True)
                    loaded.model(
                        input_ids=torch.tensor([[40], [41]]), attention_mask=step_mask, past_key_values=first.past_key_values
                    )
        assert isinstance(state, StepState)
        assert (state.forwards, state.seen, state.width) == (2, width + 1, width)
        assert raw[1].shape[1] == 1
        prefill_rows = (out[0] - raw[0]).abs().amax(-1) > 0
        assert bool(prefill_rows[:, width - 1].all())  # the last prompt position is in every set
        decode = out[1] - raw[1]
        if decode_steered:
            torch.testing.assert_close(decode, (4.0 * _unit(v)).expand_as(decode), atol=1e-5, rtol=0)
        else:
            assert torch.equal(decode, torch.zeros_like(decode))


def test_bfloat16_math_in_float32_cast_back(tiny_root, tiny_model_dir):
    tiny_model_dir("llama")
    loaded = load_model(ModelSpec(model="models/llama", device="cpu", dtype="bfloat16"), tiny_root)
    v = _vec(4)
    block = decoder_layers(loaded.model)[1]
    raw: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        with add_hooks([(block, lambda m, i, o: raw.append(output_tensor(o).clone()))]):
            with intervene(loaded, [(Steer(v, 1, 0.37, "all"),)], [0], [ids.shape[1]]):
                with add_hooks([(block, lambda m, i, o: steered.append(output_tensor(o).clone()))]):
                    loaded.model(input_ids=ids, use_cache=False)
        zero_ref = loaded.model(input_ids=ids, use_cache=False).logits
        with intervene(loaded, [(Steer(v, 1, 0.0, "all"),)], [0], [ids.shape[1]]):
            zero = loaded.model(input_ids=ids, use_cache=False).logits
    assert raw[0].dtype == steered[0].dtype == torch.bfloat16
    expected = (raw[0].float() + 0.37 * _unit(v)).to(torch.bfloat16)
    assert torch.equal(steered[0], expected)
    assert torch.equal(zero, zero_ref)


# --------------------------------------------------------------------------- ablation, capping, composition
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_ablation_removes_the_direction_at_every_layer(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    v = _vec(5)
    seqs = sorted([(p, [30, 31, 32]) for p in PROMPTS], key=lambda s: len(s[0]) + len(s[1]))  # project_tokens' batch order
    layers = list(range(loaded.n_layers))
    vectors = v.expand(1, len(layers), HIDDEN)
    plain = project_tokens(loaded, seqs, layers, vectors)
    with intervene(loaded, [(Ablate(v),)], [0] * len(seqs), [len(p) + len(r) for p, r in seqs]):
        ablated = project_tokens(loaded, seqs, layers, vectors)
    for before, after in zip(plain, ablated, strict=True):
        assert before.scores.abs().max() > 0.1
        assert after.scores.abs().max() < 1e-4 * after.norms.max()
        # at the first block, only the direction went: the norm drops by exactly the projection
        torch.testing.assert_close(after.norms[0] ** 2, before.norms[0] ** 2 - before.scores[0, 0] ** 2, atol=1e-3, rtol=1e-4)


def test_ablation_on_listed_layers_only(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = _vec(6)
    _, ref, _ = _block_outputs(loaded, PROMPTS)
    _, out, batch = _block_outputs(loaded, PROMPTS, [(Ablate(v, layers=(1,)),)])
    u = _unit(v)
    assert torch.equal(out[0], ref[0])
    for row, pad in enumerate(batch.pads):
        assert (out[1][row, pad:] @ u).abs().max() < 1e-5
        assert torch.equal(out[1][row, :pad], ref[1][row, :pad])
    assert (out[2][:, -1] @ u).abs().max() > 1e-3  # layer 2 rebuilds some of it


def test_cap_clamps_the_projection(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = _vec(7)
    u = _unit(v)
    _, ref, batch = _block_outputs(loaded, PROMPTS)
    real = torch.cat([ref[2][row, pad:] @ u for row, pad in enumerate(batch.pads)])
    floor, ceiling = float(real.quantile(0.25)), float(real.quantile(0.75))
    _, out, _ = _block_outputs(loaded, PROMPTS, [(Cap(v, 2, floor=floor, ceiling=ceiling),)])
    for row, pad in enumerate(batch.pads):
        before, after = ref[2][row, pad:] @ u, out[2][row, pad:] @ u
        assert after.min() >= floor - 1e-5 and after.max() <= ceiling + 1e-5
        inside = (before >= floor) & (before <= ceiling)
        torch.testing.assert_close(out[2][row, pad:][inside], ref[2][row, pad:][inside], atol=1e-6, rtol=0)
        # only the component along v̂ moves
        delta = out[2][row, pad:] - ref[2][row, pad:]
        torch.testing.assert_close(delta, (after - before)[:, None] * u, atol=1e-5, rtol=0)
    # one-sided
    _, out, _ = _block_outputs(loaded, PROMPTS, [(Cap(v, 2, ceiling=floor),)])
    assert max(float((out[2][row, pad:] @ u).max()) for row, pad in enumerate(batch.pads)) <= floor + 1e-5


def test_composition_applies_in_order(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = _vec(8)
    u = _unit(v)
    _, steer_then_ablate, batch = _block_outputs(loaded, PROMPTS, [(Steer(v, 1, 6.0, "all"), Ablate(v, (1,)))])
    _, ablate_then_steer, _ = _block_outputs(loaded, PROMPTS, [(Ablate(v, (1,)), Steer(v, 1, 6.0, "all"))])
    w = _vec(9)
    _, two_steers, _ = _block_outputs(loaded, PROMPTS, [(Steer(v, 1, 6.0, "all"), Steer(w, 1, -2.0, "all"))])
    _, ref, _ = _block_outputs(loaded, PROMPTS)
    for row, pad in enumerate(batch.pads):
        assert (steer_then_ablate[1][row, pad:] @ u).abs().max() < 1e-5
        torch.testing.assert_close(
            ablate_then_steer[1][row, pad:] @ u, torch.full((batch.input_ids.shape[1] - pad,), 6.0), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            two_steers[1][row, pad:] - ref[1][row, pad:],
            (6.0 * u - 2.0 * _unit(w)).expand(batch.input_ids.shape[1] - pad, -1),
            atol=1e-5,
            rtol=0,
        )


def test_rows_with_different_configs_match_each_config_alone(tiny_loaded):
    loaded = tiny_loaded("llama")
    v, w = _vec(10), _vec(11)
    configs = [
        (),
        (Steer(v, 0, 3.0, "all"),),
        (Steer(w, 2, -4.0, "response"), Cap(v, 2, ceiling=0.0)),
        (Ablate(v),),
        (Steer(v, 1, 0.0),),
    ]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(configs))]
    mixed, _, _ = _block_outputs(loaded, prompts, configs, row_config=list(range(len(configs))))
    for k, config in enumerate(configs):
        alone, _, _ = _block_outputs(loaded, prompts, [config])  # same padding layout
        torch.testing.assert_close(mixed.logits[k], alone.logits[k], atol=1e-5, rtol=1e-5)
    plain, _, _ = _block_outputs(loaded, prompts)
    assert torch.equal(mixed.logits[0], plain.logits[0])
    assert torch.equal(mixed.logits[4], plain.logits[4])
    assert not torch.allclose(mixed.logits[1], plain.logits[1])


# --------------------------------------------------------------------------- validation and hygiene
def test_validation():
    v = _vec()
    with pytest.raises(TraitflowError, match="zero"):
        Steer(torch.zeros(HIDDEN), 0, 1.0)
    with pytest.raises(TraitflowError, match="positions"):
        Steer(v, 0, 1.0, "middle")  # type: ignore[arg-type]
    with pytest.raises(TraitflowError, match="one-dimensional"):
        Ablate(torch.ones(2, HIDDEN))
    with pytest.raises(TraitflowError, match="floor"):
        Cap(v, 0)
    with pytest.raises(TraitflowError, match="above ceiling"):
        Cap(v, 0, floor=2.0, ceiling=1.0)
    with pytest.raises(TraitflowError, match="finite"):
        Steer(v, 0, float("nan"))
    s = Steer(v.tolist(), 1.0, 2)  # coerced
    assert isinstance(s.vector, torch.Tensor) and s.layer == 1 and s.coefficient == 2.0
    assert Ablate(v, layers=[2, 0, 2]).layers == (0, 2)


def test_validation_against_the_model(tiny_loaded):
    loaded = tiny_loaded("llama")
    v = _vec()
    with pytest.raises(TraitflowError, match="out of range"):
        with intervene(loaded, [(Steer(v, 3, 1.0),)], [0], [3]):
            pass
    with pytest.raises(TraitflowError, match="out of range"):
        with intervene(loaded, [(Ablate(v, layers=(0, 7)),)], [0], [3]):
            pass
    with pytest.raises(TraitflowError, match="hidden size"):
        with intervene(loaded, [(Steer(torch.ones(10), 0, 1.0),)], [0], [3]):
            pass
    with pytest.raises(ValueError, match="configuration index"):
        with intervene(loaded, [()], [1], [3]):
            pass
    with pytest.raises(ValueError, match="rows"):
        with intervene(loaded, [()], [0, 0], [3]):
            pass
    with pytest.raises(ValueError, match="2 rows"):
        with intervene(loaded, [(Steer(v, 0, 1.0),)], [0, 0], [3, 3]), torch.inference_mode():
            loaded.model(input_ids=torch.tensor([[5, 6, 7]]))


def test_hooks_removed_and_lock_released_when_the_body_raises(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    v = _vec()
    before = _hook_counts(loaded.model)
    other_thread_got_lock = []

    def try_lock():
        lock = model_lock(loaded.model)
        got = lock.acquire(blocking=False)
        other_thread_got_lock.append(got)
        if got:
            lock.release()

    with pytest.raises(KeyboardInterrupt):
        with intervene(loaded, [(Steer(v, 1, 2.0), Ablate(v))], [0], [3]):
            assert _hook_counts(loaded.model) != before
            t = threading.Thread(target=try_lock)
            t.start()
            t.join()
            with torch.inference_mode():
                loaded.model(input_ids=torch.tensor([[5, 6, 7]]))
            raise KeyboardInterrupt
    assert _hook_counts(loaded.model) == before
    assert other_thread_got_lock == [False]  # held while the hooks were on
    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert other_thread_got_lock == [False, True]


def test_empty_configs_install_nothing(tiny_loaded):
    loaded = tiny_loaded("llama")
    before = _hook_counts(loaded.model)
    with intervene(loaded, [(), ()], [0, 1], [2, 3]) as state:
        assert _hook_counts(loaded.model) == before
    assert state.seen == 0
