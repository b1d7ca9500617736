"""A prompt that cannot fit the model's context (its ids + max_new_tokens) is a one-line
TraitflowError naming the prompt, raised before anything is generated.

The models are the conftest tiny ones rebuilt with a 32-token context (``max_position_embeddings``;
GPT-2's ``n_positions``, whose learned position table makes an overlong input an indexing error).
"""

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from traitflow.data.prompts import load_prompt_set
from traitflow.data.traits import load_trait
from traitflow.errors import TraitflowError
from traitflow.extract.responses import generate_trait_responses
from traitflow.model.chat import prompt_ids
from traitflow.model.generate import context_length, generate
from traitflow.monitor.inference import generate_inference_responses
from traitflow.steer.run import SteeringSetup, steer_and_answer

CONTEXT = 32
LONG = " ".join(["Tell me about cats, dogs and trains."] * 12)  # far more than 32 tokens


@pytest.fixture(scope="module")
def short_loaded(tiny_root, tiny_model_dir):
    """``short_loaded(arch)``: the tiny ``arch`` model with a 32-token context, loaded like a user's model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.models import ModelSpec

    def get(arch: str):
        folder = tiny_root / "models" / f"{arch}-short"
        if not folder.exists():
            config = AutoConfig.from_pretrained(tiny_model_dir(arch))
            config.max_position_embeddings = CONTEXT  # GPT-2 maps it to n_positions
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
            AutoTokenizer.from_pretrained(tiny_model_dir(arch)).save_pretrained(folder)
        spec = ModelSpec(name=f"{arch}-short", model=f"models/{arch}-short", device="cpu", dtype="float32")
        return MODEL_CACHE.get(spec, tiny_root)

    return get


@contextmanager
def forwards(loaded):
    """Counts the model's forward calls while open (generation runs at least one)."""
    calls: list[int] = []
    handle = loaded.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_context_length_is_the_configured_one(short_loaded, tiny_loaded):
    assert context_length(short_loaded("llama")) == CONTEXT
    assert context_length(short_loaded("gpt2")) == CONTEXT
    assert context_length(tiny_loaded("llama")) == 256


def test_context_length_falls_back_to_the_tokenizer(tiny_loaded, tiny_model_dir):
    """A config without max_position_embeddings (Mamba's) leaves the tokenizer's model_max_length."""
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    base = tiny_loaded("llama")
    mamba = MambaForCausalLM(MambaConfig(vocab_size=len(base.tokenizer), hidden_size=8, num_hidden_layers=1, state_size=4))
    assert not hasattr(mamba.config, "max_position_embeddings")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("llama"), model_max_length=40)
    assert context_length(dataclasses.replace(base, model=mamba, tokenizer=tokenizer)) == 40


def test_exactly_full_context_generates_and_one_more_token_is_refused(short_loaded):
    loaded = short_loaded("gpt2")  # learned positions: past 32 of them, torch fails with an IndexError
    ids = prompt_ids(loaded, "Hello there! How are you today?")
    room = CONTEXT - len(ids)
    assert room > 1
    with forwards(loaded) as calls:
        generations = generate(loaded, [ids], max_new_tokens=room)
    assert len(calls) > 0  # the counter sees generation
    assert len(generations[0].prompt_ids) + len(generations[0].response_ids) <= CONTEXT
    with forwards(loaded) as calls, pytest.raises(TraitflowError) as info:
        generate(loaded, [ids, ids], max_new_tokens=room + 1)
    assert str(info.value) == (f"prompt 0: {len(ids)} prompt tokens + max_new_tokens {room + 1} exceed the context of model "
                               f"gpt2-short ({CONTEXT} tokens); shorten the prompt or lower max_new_tokens")
    assert calls == []


def write_trait(folder: Path, long_side: str) -> None:
    folder.mkdir(parents=True)
    short = ["Be cheerful.", "Be gloomy.", "Hello there!"]
    for side in ("positive", "negative"):
        lines = [*short[:1], LONG, *short[1:]] if side == long_side else short
        (folder / f"{side}.txt").write_text("\n".join(lines) + "\n")
    (folder / "definition.txt").write_text("How cheerful the reply is.\n")
    (folder / "steering.json").write_text(json.dumps({"questions": ["How are you?", "Hello?", LONG]}))


def test_long_trait_scenario_names_trait_side_and_index(short_loaded, tmp_path):
    loaded = short_loaded("llama")
    write_trait(tmp_path / "t" / "long", long_side="negative")
    trait = load_trait(tmp_path / "t" / "long", "t/long", root=tmp_path)
    expected = (r"^trait t/long, negative scenario 1: \d+ prompt tokens \+ max_new_tokens 4 exceed the context of model "
                r"llama-short \(32 tokens\); shorten the prompt or lower max_new_tokens$")
    with forwards(loaded) as calls, pytest.raises(TraitflowError, match=expected) as info:
        generate_trait_responses(loaded, trait, max_new_tokens=4, batch_size=2)
    assert "\n" not in str(info.value)
    assert calls == []  # nothing was generated, not even the short scenarios


def test_short_prompts_plus_too_many_new_tokens_are_refused(short_loaded, tmp_path):
    """Short prompts fit alone; with max_new_tokens they do not: the first one is named."""
    loaded = short_loaded("llama")
    write_trait(tmp_path / "t" / "short", long_side="none")
    trait = load_trait(tmp_path / "t" / "short", "t/short", root=tmp_path)
    assert generate_trait_responses(loaded, trait, max_new_tokens=2, batch_size=2)["items"]
    with pytest.raises(TraitflowError, match=r"^trait t/short, positive scenario 0: .* max_new_tokens 32 exceed"):
        generate_trait_responses(loaded, trait, max_new_tokens=CONTEXT, batch_size=2)


def test_long_steering_question_names_trait_and_question(short_loaded, tmp_path):
    loaded = short_loaded("llama")
    write_trait(tmp_path / "t" / "steer", long_side="none")
    trait = load_trait(tmp_path / "t" / "steer", "t/steer", root=tmp_path)
    setup = SteeringSetup(trait=trait, variant="llama-short", questions=trait.steering.questions, position="response[:]",
                          component="residual", method="mean_diff", layers=[], vectors={}, norms={}, direction=1,
                          max_new_tokens=4, batch_size=2, vector_source={})
    expected = r"^trait t/steer, steering question 2: \d+ prompt tokens"
    with forwards(loaded) as calls, pytest.raises(TraitflowError, match=expected) as info:
        steer_and_answer(loaded, setup, {None: None})
    assert "\n" not in str(info.value)
    assert calls == []


def test_long_prompt_set_prompt_names_set_and_id(short_loaded, tmp_path):
    loaded = short_loaded("llama")
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"prompts": [{"id": "hi", "text": "Hello?"}, {"id": "rambling", "text": LONG}]}))
    prompts = load_prompt_set(path, "t/long")
    expected = r"^prompt set t/long, prompt 'rambling': \d+ prompt tokens"
    with forwards(loaded) as calls, pytest.raises(TraitflowError, match=expected) as info:
        generate_inference_responses(loaded, prompts, max_new_tokens=4, batch_size=2)
    assert "\n" not in str(info.value)
    assert calls == []
