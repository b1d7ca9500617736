import pytest
import torch

from tests.conftest import TINY_ARCHS
from traitflow.model.chat import prompt_ids
from traitflow.model.generate import Generation, _cut, generate
from traitflow.model.loading import load_model
from traitflow.specs.models import ModelSpec

PROMPTS = [
    ("Hello there", None),
    ("Tell me about cats, dogs and trains. Be formal.", "Be cheerful."),
    ("Hi", None),
    ("How are you today?", "Be gloomy."),
    ("The quick brown fox jumps over the lazy dog.", None),
]


def _prompts(loaded) -> list[list[int]]:
    return [prompt_ids(loaded, text, system) for text, system in PROMPTS]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batched_equals_one_by_one(arch, tiny_loaded):
    loaded = tiny_loaded(arch)
    prompts = _prompts(loaded)
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    batched = generate(loaded, prompts, max_new_tokens=10, batch_size=4)
    single = [generate(loaded, [p], max_new_tokens=10)[0] for p in prompts]
    assert [g.response_ids for g in batched] == [g.response_ids for g in single]
    for prompt, gen in zip(prompts, batched, strict=True):
        assert isinstance(gen, Generation)
        assert gen.prompt_ids == prompt  # order preserved
        assert len(gen.response_ids) <= 10
        assert not set(gen.response_ids) & set(loaded.eos_token_ids)
        assert gen.text == loaded.tokenizer.decode(gen.response_ids, skip_special_tokens=True)


def test_greedy_matches_manual_argmax(tiny_loaded):
    loaded = tiny_loaded("llama")
    prompt = _prompts(loaded)[1]
    gen = generate(loaded, [prompt], max_new_tokens=6)[0]
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(len(gen.response_ids)):
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    assert ids[len(prompt) :] == gen.response_ids


def test_cut_at_first_eos(tiny_root, tiny_model_dir):
    """Make a token the model emits greedily an eos: responses stop before it, also in a batch."""
    tiny_model_dir("qwen2")
    loaded = load_model(ModelSpec(model="models/qwen2", device="cpu"), tiny_root)  # private copy: config is edited
    prompts = _prompts(loaded)
    free = generate(loaded, prompts, max_new_tokens=8)
    target = free[1].response_ids[3]
    stop_at = free[1].response_ids.index(target)
    original = loaded.model.generation_config.eos_token_id
    loaded.model.generation_config.eos_token_id = [original, target]
    try:
        cut = generate(loaded, prompts, max_new_tokens=8, batch_size=5)
    finally:
        loaded.model.generation_config.eos_token_id = original
    assert cut[1].response_ids == free[1].response_ids[:stop_at]
    for a, b in zip(free, cut, strict=True):
        expected = a.response_ids[: a.response_ids.index(target)] if target in a.response_ids else a.response_ids
        assert b.response_ids == expected


def test_cut_helper():
    assert _cut([1, 2, 3, 2], {2}) == [1]
    assert _cut([2], {2}) == []
    assert _cut([1, 3], {2}) == [1, 3]
    assert _cut([1, 3, 9, 2], {9, 2}) == [1, 3]


def test_sampling_is_seeded_and_leaves_global_rng(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    prompts = _prompts(loaded)[:3]
    state = torch.random.get_rng_state()
    a = generate(loaded, prompts, max_new_tokens=8, do_sample=True, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    b = generate(loaded, prompts, max_new_tokens=8, do_sample=True, seed=1)
    c = generate(loaded, prompts, max_new_tokens=8, do_sample=True, seed=2)
    greedy = generate(loaded, prompts, max_new_tokens=8)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert [g.response_ids for g in a] != [g.response_ids for g in c] or [g.response_ids for g in a] != [
        g.response_ids for g in greedy
    ]


def test_empty_and_bad_inputs(tiny_loaded):
    loaded = tiny_loaded("llama")
    assert generate(loaded, [], max_new_tokens=4) == []
    with pytest.raises(ValueError):
        generate(loaded, [[]], max_new_tokens=4)
    with pytest.raises(ValueError):
        generate(loaded, [[5, 6]], max_new_tokens=0)


def test_lora_generation_differs(tiny_loaded, tiny_lora_dir):
    tiny_lora_dir("llama")
    base = tiny_loaded("llama")
    lora = tiny_loaded("llama", lora="loras/llama")
    prompts = _prompts(base)
    a = generate(base, prompts, max_new_tokens=8)
    b = generate(lora, prompts, max_new_tokens=8)
    assert [g.response_ids for g in a] != [g.response_ids for g in b]
    # batched == one by one through the PEFT wrapper too
    assert [g.response_ids for g in b] == [generate(lora, [p], max_new_tokens=8)[0].response_ids for p in prompts]
