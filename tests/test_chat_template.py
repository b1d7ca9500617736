"""Chat-template keywords from the model spec: a thinking switch that defaults to off, and any
other keyword passed through to the template (``ModelSpec.chat_template_kwargs``)."""

import json
import shutil
from pathlib import Path

import pytest

from traitflow.errors import TraitflowError
from traitflow.model.chat import format_prompt, prompt_ids, template_kwargs
from traitflow.model.loading import MODEL_CACHE
from traitflow.specs.loader import load_project
from traitflow.specs.models import ModelSpec

REPO = Path(__file__).resolve().parents[1]

# Qwen3 style: thinking off renders an empty think block after the generation prompt; `persona`
# is a made-up keyword to show that any keyword reaches the template.
THINKING_TEMPLATE = (
    "{% if persona is defined %}<|im_start|>system\nYou are {{ persona }}.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
GEN = "<|im_start|>assistant\n"
THINK_OFF = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def thinking_dir(tiny_root, tiny_model_dir) -> str:
    """A tiny Qwen2 model whose tokenizer has the thinking template; the spec's `model` path."""
    from transformers import AutoTokenizer

    target = tiny_root / "models" / "thinking"
    if not target.exists():
        shutil.copytree(tiny_model_dir("qwen2"), target)
        tokenizer = AutoTokenizer.from_pretrained(target)
        tokenizer.chat_template = THINKING_TEMPLATE
        tokenizer.save_pretrained(target)
    return "models/thinking"


@pytest.fixture(scope="module")
def thinking(tiny_root, thinking_dir):
    """``thinking(**chat_template_kwargs)`` -> LoadedModel through MODEL_CACHE, as users load it."""

    def get(**kwargs):
        spec = ModelSpec(name="think", model=thinking_dir, device="cpu", dtype="float32", chat_template_kwargs=kwargs)
        return MODEL_CACHE.get(spec, tiny_root)

    return get


def test_rule_defaults_thinking_off_and_the_spec_wins():
    assert template_kwargs(ModelSpec(model="m")) == {"enable_thinking": False}
    assert template_kwargs(ModelSpec(model="m", chat_template_kwargs={"enable_thinking": True})) == {"enable_thinking": True}
    assert template_kwargs(ModelSpec(model="m", chat_template_kwargs={"persona": "a pirate"})) == {
        "enable_thinking": False, "persona": "a pirate"}


def test_rule_rejects_arguments_it_sets_itself():
    with pytest.raises(TraitflowError, match="add_generation_prompt"):
        template_kwargs(ModelSpec(name="v", model="m", chat_template_kwargs={"add_generation_prompt": False}))


def test_default_renders_thinking_off(thinking):
    loaded = thinking()
    assert loaded.uses_chat_template
    text, templated = format_prompt(loaded, "How are you?")
    assert templated
    assert text == f"<|im_start|>user\nHow are you?<|im_end|>\n{GEN}{THINK_OFF}"
    # with a system prompt too
    text, _ = format_prompt(loaded, "How are you?", system_prompt="Be cheerful.")
    assert text.startswith("<|im_start|>system\nBe cheerful.<|im_end|>\n") and text.endswith(GEN + THINK_OFF)


def test_enable_thinking_true_renders_thinking_on(thinking):
    text, _ = format_prompt(thinking(enable_thinking=True), "How are you?")
    assert text == f"<|im_start|>user\nHow are you?<|im_end|>\n{GEN}"
    assert "<think>" not in text


def test_explicit_false_matches_the_default(thinking):
    assert prompt_ids(thinking(enable_thinking=False), "Hi") == prompt_ids(thinking(), "Hi")


def test_any_keyword_reaches_the_template(thinking):
    text, _ = format_prompt(thinking(persona="a pirate"), "How are you?")
    assert text.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n")
    assert text.endswith(GEN + THINK_OFF)  # the thinking default still holds
    text, _ = format_prompt(thinking(persona="a pirate", enable_thinking=True), "How are you?")
    assert "You are a pirate." in text and text.endswith(GEN)


def test_prompt_ids_follow_the_keywords(thinking):
    off, on, persona = thinking(), thinking(enable_thinking=True), thinking(persona="a pirate")
    ids_off, ids_on, ids_persona = (prompt_ids(m, "How are you?") for m in (off, on, persona))
    assert len({tuple(ids_off), tuple(ids_on), tuple(ids_persona)}) == 3
    assert len(ids_off) > len(ids_on)
    tokenizer = off.tokenizer
    assert tokenizer.decode(ids_off) == format_prompt(off, "How are you?")[0]
    assert tokenizer.decode(ids_on) == format_prompt(on, "How are you?")[0]
    assert tokenizer.decode(ids_persona) == format_prompt(persona, "How are you?")[0]


# --------------------------------------------------------------------------- existing templates
@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # ChatML; Gemma-style (raises on a system role)
def test_templates_without_a_switch_are_unchanged(tiny_loaded, arch):
    loaded = tiny_loaded(arch)
    tokenizer = loaded.tokenizer
    user = [{"role": "user", "content": "Hi"}]
    assert format_prompt(loaded, "Hi")[0] == tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    text, _ = format_prompt(loaded, "Hi", system_prompt="Be formal.")
    if arch == "gemma2":  # the system prompt is folded into the user turn
        folded = [{"role": "user", "content": "Be formal.\n\nHi"}]
        assert text == tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
    else:
        both = [{"role": "system", "content": "Be formal."}, *user]
        assert text == tokenizer.apply_chat_template(both, tokenize=False, add_generation_prompt=True)
    assert "<think>" not in text


def test_toy_model_template_is_unchanged():
    loaded = MODEL_CACHE.get(ModelSpec(name="chat", model="datasets/models/toy-chat", device="cpu", dtype="float32"), REPO)
    messages = [{"role": "system", "content": "Be gloomy."}, {"role": "user", "content": "How is the weather?"}]
    expected = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert format_prompt(loaded, "How is the weather?", system_prompt="Be gloomy.") == (expected, True)


def test_base_model_ignores_the_keywords(tiny_loaded):
    loaded = tiny_loaded("llama", chat_template=False, chat_template_kwargs={"enable_thinking": True})
    assert format_prompt(loaded, "Hi", system_prompt="Be formal.") == ("Be formal.\n\nHi", False)


# --------------------------------------------------------------------------- staleness
EXPERIMENT = """\
name: e
variants:
  chat: {{model: some-org/some-model{extra}}}
traits: [x/*]
"""


def _project(root: Path, extra: str) -> Path:
    trait = root / "datasets" / "traits" / "x" / "t"
    trait.mkdir(parents=True, exist_ok=True)
    for side in ("positive", "negative"):
        lines = [json.dumps({"prompt": f"{side} scenario number {i}"}) for i in range(12)]
        (trait / f"{side}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "specs" / "experiments").mkdir(parents=True, exist_ok=True)
    (root / "specs" / "experiments" / "e.yaml").write_text(EXPERIMENT.format(extra=extra))
    return root


def test_chat_template_kwargs_change_the_variants_version(tmp_path):
    """The keywords are part of the variant: its `models` source version changes with them (so its
    responses, and everything downstream, go stale), not any asset's code version."""
    from traitflow.model.fingerprint import model_version

    def versions(extra: str) -> tuple[str, str]:
        root = _project(tmp_path / "proj", extra)
        exp = load_project(root).experiments["e"]
        variant = exp.extraction_variant
        return model_version(exp.variants[variant], root), exp.code_version("responses")

    plain, on, persona = (versions(extra) for extra in (
        "", ", chat_template_kwargs: {enable_thinking: true}", ", chat_template_kwargs: {persona: a pirate}"))
    assert len({plain[0], on[0], persona[0]}) == 3
    assert versions(", chat_template_kwargs: {enable_thinking: true}") == on  # stable
    assert plain[1] == on[1] == persona[1]  # a data version, not a code version
