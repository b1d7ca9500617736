import pytest
import torch

from tests.conftest import TINY_ARCHS
from traitflow.errors import TraitflowError
from traitflow.extract.positions import parse_position
from traitflow.model.arch import decoder_layers, final_norm
from traitflow.model.hooks import (
    StopForward,
    TokenProjection,
    add_hooks,
    capture_pooled,
    output_tensor,
    project_tokens,
    replace_output,
)

POSITIONS = ["response[:5]", "prompt[-1]", "all[:]", "response[-3:]", "prompt[-4:-1]"]


def _sequences(n: int = 5, seed: int = 0, vocab: int = 300) -> list[tuple[list[int], list[int]]]:
    """Varying prompt/response lengths (some longer than the sliding window of 8)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(4, 14, (1,), generator=g))
        r = int(torch.randint(3, 12, (1,), generator=g))
        ids = torch.randint(5, vocab, (p + r,), generator=g).tolist()
        out.append((ids[:p], ids[p:]))
    return out


def _hidden_states(loaded, ids: list[int]):
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False).hidden_states


def _our_hooks(model) -> int:
    """Hooks registered by traitflow (transformers installs its own output-recording hooks)."""
    count = 0
    for m in model.modules():
        for h in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
            if getattr(h, "__module__", "").startswith(("traitflow", "tests", "test_")):
                count += 1
    return count


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_residual_matches_hidden_states(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    seqs = _sequences(5, seed=TINY_ARCHS.index(arch))
    layers = [0, 1, 2]
    acts = capture_pooled(loaded, seqs, layers, POSITIONS, batch_size=3)
    for key in POSITIONS:
        assert acts[key].shape == (len(seqs), 3, 64)
        assert acts[key].dtype == torch.float32 and acts[key].device.type == "cpu"
    for i, (p, r) in enumerate(seqs):
        hs = _hidden_states(loaded, p + r)
        for key in POSITIONS:
            s, e = parse_position(key).window(len(p), len(r))
            for j in (0, 1):  # hidden_states[L+1] is block L's output for all but the last block
                expected = hs[j + 1][0, s:e].mean(0)
                torch.testing.assert_close(acts[key][i, j], expected, atol=2e-5, rtol=1e-4)
        # the last entry is final_norm(block output): check at a single token
        s, _ = parse_position("prompt[-1]").window(len(p), len(r))
        with torch.inference_mode():
            normed = final_norm(loaded.model)(acts["prompt[-1]"][i, 2][None, None])[0, 0]
        torch.testing.assert_close(normed, hs[-1][0, s], atol=2e-5, rtol=1e-4)
    assert _our_hooks(loaded.model) == 0


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batched_equals_per_item(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    seqs = _sequences(6, seed=10 + TINY_ARCHS.index(arch))
    batched = capture_pooled(loaded, seqs, [2, 0], ["response[:5]", "prompt[-1]"], batch_size=6)
    single = capture_pooled(loaded, seqs, [2, 0], ["response[:5]", "prompt[-1]"], batch_size=1)
    for key in batched:
        torch.testing.assert_close(batched[key], single[key], atol=2e-5, rtol=1e-4)


def test_layer_order_duplicates_and_stop_early(tiny_loaded):
    loaded = tiny_loaded("llama")
    seqs = _sequences(4, seed=3)
    ref = capture_pooled(loaded, seqs, [0, 1, 2], ["all[:]"], stop_early=False)["all[:]"]
    got = capture_pooled(loaded, seqs, [2, 0, 2], ["all[:]"])["all[:]"]
    torch.testing.assert_close(got, ref[:, [2, 0, 2]])
    only_first = capture_pooled(loaded, seqs, [0], ["all[:]"])["all[:]"]
    torch.testing.assert_close(only_first[:, 0], ref[:, 0])


def test_positions_captured_together_equal_separately(tiny_loaded):
    loaded = tiny_loaded("qwen2")
    seqs = _sequences(4, seed=4)
    together = capture_pooled(loaded, seqs, [1], POSITIONS, batch_size=4)
    for key in POSITIONS:
        alone = capture_pooled(loaded, seqs, [1], [key], batch_size=2)[key]
        torch.testing.assert_close(together[key], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_components_decompose_the_residual(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    seqs = _sequences(3, seed=5)
    pos = ["all[:]", "response[:5]"]
    resid = capture_pooled(loaded, seqs, [0, 1, 2], pos)
    attn = capture_pooled(loaded, seqs, [1, 2], pos, component="attn_contribution")
    mlp = capture_pooled(loaded, seqs, [1, 2], pos, component="mlp_contribution")
    for key in pos:
        # block L adds exactly its attention and MLP contributions to the residual stream
        torch.testing.assert_close(resid[key][:, 1:] - resid[key][:, :2], attn[key] + mlp[key], atol=1e-4, rtol=1e-4)
    attn_out = capture_pooled(loaded, seqs, [1, 2], pos, component="attn_out")
    mlp_out = capture_pooled(loaded, seqs, [1, 2], pos, component="mlp_out")
    if arch in ("gemma2", "gemma3"):  # post-norm: the raw sub-layer outputs are not what is added
        assert not torch.allclose(attn_out["all[:]"], attn["all[:]"], atol=1e-3)
        assert not torch.allclose(mlp_out["all[:]"], mlp["all[:]"], atol=1e-3)
    else:
        torch.testing.assert_close(attn_out["all[:]"], attn["all[:]"])
        torch.testing.assert_close(mlp_out["all[:]"], mlp["all[:]"])


def test_empty_window_names_position_and_sequence(tiny_loaded):
    loaded = tiny_loaded("llama")
    seqs = [([5, 6, 7], [8, 9]), ([5, 6, 7], [])]
    with pytest.raises(TraitflowError) as info:
        capture_pooled(loaded, seqs, [0], ["prompt[-1]", "response[:5]"])
    message = str(info.value)
    assert "'response[:5]'" in message and "sequence 1" in message and "\n" not in message
    with pytest.raises(TraitflowError, match="sequence 0"):
        capture_pooled(loaded, [([5, 6], [7])], [0], ["response[3]"])


def test_bad_layer_and_component(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(TraitflowError, match="out of range"):
        capture_pooled(loaded, [([5, 6], [7])], [3], ["all[:]"])
    with pytest.raises(TraitflowError, match="component"):
        capture_pooled(loaded, [([5, 6], [7])], [0], ["all[:]"], component="resid")
    with pytest.raises(TraitflowError, match="position"):
        capture_pooled(loaded, [([5, 6], [7])], [0], ["answer[:3]"])


def test_empty_inputs(tiny_loaded):
    loaded = tiny_loaded("llama")
    out = capture_pooled(loaded, [], [0, 1], ["all[:]"])
    assert out["all[:]"].shape == (0, 2, 64)
    assert project_tokens(loaded, [], [0], torch.ones(1, 1, 64)) == []


def test_lora_capture_differs(tiny_loaded, tiny_lora_dir):
    tiny_lora_dir("llama")
    base = tiny_loaded("llama")
    lora = tiny_loaded("llama", lora="loras/llama")
    seqs = _sequences(2, seed=6)
    a = capture_pooled(base, seqs, [2], ["all[:]"])["all[:]"]
    b = capture_pooled(lora, seqs, [2], ["all[:]"])["all[:]"]
    assert not torch.allclose(a, b, atol=1e-4)
    assert _our_hooks(lora.model) == 0


# --------------------------------------------------------------------------- hook hygiene
def test_add_hooks_removed_when_forward_raises(tiny_loaded):
    loaded = tiny_loaded("llama")
    block = decoder_layers(loaded.model)[1]
    before = (len(block._forward_hooks), len(block._forward_pre_hooks))

    def boom(module, inputs, output):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with add_hooks([(block, boom)], module_pre_hooks=[(block, lambda m, i: None)]):
            assert len(block._forward_hooks) == before[0] + 1
            assert _our_hooks(loaded.model) == 2
            loaded.model(input_ids=torch.tensor([[5, 6, 7]]))
    assert (len(block._forward_hooks), len(block._forward_pre_hooks)) == before


def test_capture_cleans_up_when_forward_raises(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(IndexError):
        capture_pooled(loaded, [([5, 6], [10_000])], [0, 1], ["all[:]"])  # token id beyond the vocabulary
    assert _our_hooks(loaded.model) == 0
    with pytest.raises(IndexError):
        project_tokens(loaded, [([5, 6], [10_000])], [0], torch.ones(1, 1, 64))
    assert _our_hooks(loaded.model) == 0


def test_steering_style_hook_changes_output(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    block = decoder_layers(loaded.model)[0]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        ref = loaded.model(input_ids=ids).logits
        with add_hooks([(block, lambda m, i, o: replace_output(o, output_tensor(o) + 1.0))]):
            steered = loaded.model(input_ids=ids).logits
        again = loaded.model(input_ids=ids).logits
    assert not torch.allclose(ref, steered)
    torch.testing.assert_close(ref, again)


def test_output_helpers():
    t = torch.ones(2)
    assert output_tensor(t) is t
    assert output_tensor((t, None)) is t
    new = torch.zeros(2)
    assert replace_output((t, 1), new)[0] is new and replace_output((t, 1), new)[1] == 1
    assert replace_output(t, new) is new
    assert issubclass(StopForward, Exception)


# --------------------------------------------------------------------------- per-token projection
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt_neox"])
def test_project_tokens(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    seqs = _sequences(5, seed=7)
    layers = [0, 1]
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(3, len(layers), 64, generator=g) * 3.0  # not unit: normalised inside
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    batched = project_tokens(loaded, seqs, layers, vectors, batch_size=4)
    single = project_tokens(loaded, seqs, layers, vectors, batch_size=1)
    for i, (p, r) in enumerate(seqs):
        proj = batched[i]
        assert isinstance(proj, TokenProjection)
        assert proj.prompt_len == len(p)
        assert proj.scores.shape == (3, 2, len(p) + len(r))
        assert proj.norms.shape == (2, len(p) + len(r))
        hs = _hidden_states(loaded, p + r)
        for j, layer in enumerate(layers):
            h = hs[layer + 1][0]
            torch.testing.assert_close(proj.norms[j], h.norm(dim=-1), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(proj.scores[:, j], unit[:, j] @ h.T, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(proj.scores, single[i].scores, atol=2e-5, rtol=1e-4)
        assert proj.scores.untyped_storage().nbytes() == proj.scores.numel() * 4  # not a view of the batch
    assert _our_hooks(loaded.model) == 0


def test_project_tokens_shape_check(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(ValueError, match="vectors"):
        project_tokens(loaded, [([5], [6])], [0, 1], torch.ones(1, 1, 64))


def test_model_lock_is_per_model(tiny_loaded):
    from traitflow.model.hooks import model_lock

    a, b = tiny_loaded("llama"), tiny_loaded("gpt2")
    assert model_lock(a.model) is model_lock(a.model)
    assert model_lock(a.model) is not model_lock(b.model)
    with model_lock(a.model):  # re-entrant: capture inside a held lock works
        capture_pooled(a, [([5, 6], [7])], [0], ["all[:]"])
