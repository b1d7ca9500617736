import pytest
import torch

from tests.conftest import TINY_ARCHS, TOKENIZER_KIND
from traitflow.errors import TraitflowError
from traitflow.model import arch as A
from traitflow.model.chat import prompt_ids
from traitflow.model.loading import MODEL_CACHE, LoadedModel, ModelCache, _resolve_source, load_model
from traitflow.specs.models import ModelSpec


def spec(arch: str, **fields) -> ModelSpec:
    return ModelSpec(model=f"models/{arch}", **fields)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_load_every_arch(arch, tiny_root, tiny_model_dir):
    tiny_model_dir(arch)
    loaded = MODEL_CACHE.get(spec(arch, name=arch, device="cpu", dtype="float32"), tiny_root)
    assert isinstance(loaded, LoadedModel)
    assert loaded.n_layers == 3
    assert loaded.hidden_size == 64
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert loaded.source == str((tiny_root / "models" / arch).resolve())
    assert loaded.revision is None
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token is not None
    assert loaded.uses_chat_template == (TOKENIZER_KIND[arch] != "plain")
    # architecture map
    blocks = A.decoder_layers(loaded.model)
    assert len(blocks) == 3
    assert A.unembedding(loaded.model).weight.shape == (len(loaded.tokenizer), 64)
    assert A.embedding(loaded.model).weight.shape == (len(loaded.tokenizer), 64)
    assert isinstance(A.final_norm(loaded.model), torch.nn.Module)
    for comp in A.COMPONENTS:
        assert isinstance(A.component_module(loaded.model, 2, comp), torch.nn.Module)
    assert A.component_module(loaded.model, 1, "residual") is blocks[1]
    assert A.is_post_norm(blocks[0]) == (arch in ("gemma2", "gemma3"))


def test_pad_falls_back_to_eos(tiny_loaded):
    loaded = tiny_loaded("gpt2")  # the 'plain' tokenizer has no pad token
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.pad_token_id == loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.eos_token_id in loaded.eos_token_ids


def test_auto_dtype_and_device_on_cpu(tiny_root, tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("auto picks CUDA here")
    tiny_model_dir("llama")
    loaded = load_model(spec("llama"), tiny_root)
    assert loaded.dtype == torch.float32
    assert loaded.device.type in ("cpu", "mps")


def test_explicit_dtype(tiny_root, tiny_model_dir):
    tiny_model_dir("qwen2")
    loaded = load_model(spec("qwen2", dtype="bfloat16", device="cpu"), tiny_root)
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_absolute_path(tiny_root, tiny_model_dir):
    path = tiny_model_dir("gpt2")
    loaded = load_model(ModelSpec(model=str(path), device="cpu"), tiny_root / "elsewhere")
    assert loaded.n_layers == 3


@pytest.mark.parametrize("ref", ["datasets/models/nope", "./nope", "/definitely/not/here"])
def test_missing_local_path(ref, tiny_root):
    with pytest.raises(TraitflowError) as info:
        load_model(ModelSpec(model=ref), tiny_root)
    assert "nope" in str(info.value) or "not/here" in str(info.value)
    assert "not found" in str(info.value)
    assert "\n" not in str(info.value)


def test_unloadable_local_path(tiny_root):
    bad = tiny_root / "broken_model"
    bad.mkdir(exist_ok=True)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(TraitflowError) as info:
        load_model(ModelSpec(model="broken_model", device="cpu"), tiny_root)
    assert "broken_model" in str(info.value)
    assert "\n" not in str(info.value)


def test_hub_id_resolution(tiny_root):
    assert _resolve_source("org/model", tiny_root, "model") == ("org/model", False)
    assert _resolve_source("gpt2", tiny_root, "model") == ("gpt2", False)
    with pytest.raises(TraitflowError, match="not found"):
        _resolve_source("a/b/c", tiny_root, "model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_device_missing(tiny_root, tiny_model_dir):
    tiny_model_dir("llama")
    with pytest.raises(TraitflowError, match="CUDA"):
        load_model(spec("llama", device="cuda"), tiny_root)


def test_chat_template_flag(tiny_root, tiny_model_dir):
    tiny_model_dir("llama")
    tiny_model_dir("gpt2")
    assert load_model(spec("llama", chat_template=False, device="cpu"), tiny_root).uses_chat_template is False
    with pytest.raises(TraitflowError, match="chat template"):
        load_model(spec("gpt2", chat_template=True, device="cpu"), tiny_root)


# --------------------------------------------------------------------------- LoRA
def _logits(loaded, ids):
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_changes_outputs(arch, tiny_root, tiny_lora_dir, tiny_loaded):
    tiny_lora_dir(arch)
    base = tiny_loaded(arch)
    lora = tiny_loaded(arch, lora=f"loras/{arch}")
    assert base.model is not lora.model
    from peft import PeftModel

    assert isinstance(lora.model, PeftModel)
    assert len(A.decoder_layers(lora.model)) == 3
    assert A.unwrap(lora.model) is not lora.model
    ids = prompt_ids(base, "Hello there")
    assert not torch.allclose(_logits(base, ids), _logits(lora, ids), atol=1e-4)
    # loading the adapter did not modify the base model in the cache
    assert torch.allclose(_logits(base, ids), _logits(tiny_loaded(arch), ids))


def test_lora_missing(tiny_root, tiny_model_dir):
    tiny_model_dir("llama")
    with pytest.raises(TraitflowError, match="LoRA adapter path not found"):
        load_model(spec("llama", lora="loras/nope/adapter", device="cpu"), tiny_root)


# --------------------------------------------------------------------------- cache
def test_cache_loads_once(tiny_root, tiny_model_dir):
    tiny_model_dir("mistral")
    cache = ModelCache()
    a = cache.get(spec("mistral", name="a", device="cpu"), tiny_root)
    b = cache.get(spec("mistral", name="a", device="cpu"), tiny_root)
    c = cache.get(spec("mistral", name="b", device="cpu"), tiny_root)  # same weights, another variant name
    assert cache.loads == 1
    assert a is b
    assert c.model is a.model and c.spec.name == "b" and a.spec.name == "a"
    assert (spec("mistral", name="zzz", device="cpu"), tiny_root) in cache
    d = cache.get(spec("mistral", device="cpu", dtype="bfloat16"), tiny_root)
    assert cache.loads == 2 and d.model is not a.model
    cache.clear()
    assert len(cache) == 0
    cache.get(spec("mistral", name="a", device="cpu"), tiny_root)
    assert cache.loads == 3


# --------------------------------------------------------------------------- chat formatting
def test_prompt_ids_chat_template(tiny_loaded):
    loaded = tiny_loaded("llama")
    tok = loaded.tokenizer
    ids = prompt_ids(loaded, "Hello there", "Be cheerful.")
    text = tok.decode(ids)
    assert text == (
        "<|im_start|>system\nBe cheerful.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert "system" not in tok.decode(prompt_ids(loaded, "Hello there"))
    assert prompt_ids(loaded, "Hello there", None) == prompt_ids(loaded, "Hello there", "")


def test_prompt_ids_folds_rejected_system(tiny_loaded):
    loaded = tiny_loaded("gemma2")  # template raises on a system message
    tok = loaded.tokenizer
    ids = prompt_ids(loaded, "Hello there", "Be cheerful.")
    assert tok.decode(ids) == "<s><|im_start|>user\nBe cheerful.\n\nHello there<|im_end|>\n<|im_start|>model\n"
    assert ids.count(tok.bos_token_id) == 1  # no second BOS from tokenisation


def test_prompt_ids_base_model(tiny_loaded):
    loaded = tiny_loaded("gpt2")  # no chat template; the tokenizer adds BOS
    tok = loaded.tokenizer
    ids = prompt_ids(loaded, "Hello there", "Be cheerful.")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Be cheerful.\n\nHello there"
    assert tok.decode(prompt_ids(loaded, "Hello there"), skip_special_tokens=True) == "Hello there"
    assert all(isinstance(i, int) for i in ids)


def test_loading_module_is_import_light():
    import subprocess
    import sys

    code = (
        "import sys, traitflow.model, traitflow.model.loading, traitflow.model.hooks, traitflow.model.generate;"
        "print('torch' in sys.modules, 'transformers' in sys.modules, 'peft' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False False"


def test_gemma3_multimodal_wrapper(tiny_root, tiny_model_dir):
    """A full Gemma3 checkpoint (vision + text) loads as Gemma3ForConditionalGeneration; the map finds its text stack."""
    import shutil

    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    from traitflow.model.hooks import capture_pooled

    path = tiny_root / "models" / "gemma3_mm"
    if not path.exists():
        text_dir = tiny_model_dir("gemma3")
        text = Gemma3TextConfig.from_pretrained(text_dir).to_dict()
        text.update(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
        )
        vocab = text["vocab_size"]
        config = Gemma3Config(
            text_config=text,
            vision_config=vision.to_dict(),
            mm_tokens_per_image=4,
            image_token_index=vocab - 1,
            boi_token_index=vocab - 3,
            eoi_token_index=vocab - 2,
        )
        torch.manual_seed(0)
        Gemma3ForConditionalGeneration(config).save_pretrained(path)
        for f in text_dir.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, path / f.name)
    loaded = load_model(ModelSpec(model="models/gemma3_mm", device="cpu"), tiny_root)
    assert loaded.n_layers == 2 and loaded.hidden_size == 64
    assert A.is_post_norm(A.decoder_layers(loaded.model)[0])
    ids = prompt_ids(loaded, "Hello there")
    acts = capture_pooled(loaded, [(ids[:-2], ids[-2:])], [0], ["all[:]"])["all[:]"]
    with torch.inference_mode():
        hs = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts[0, 0], hs[1][0].mean(0), atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- 8-bit / 4-bit (bitsandbytes on CPU)
TEXTS = ["Hello there", "Tell me about cats, dogs and trains.", "Great news: the weather is sunny.",
         "I cannot help with that request, sorry."]


def _final_layer(loaded) -> torch.Tensor:
    """Final-layer residual, mean over each prompt's tokens: [len(TEXTS), hidden]."""
    from traitflow.model.hooks import capture_pooled

    seqs = [(prompt_ids(loaded, text), []) for text in TEXTS]
    return capture_pooled(loaded, seqs, [loaded.n_layers - 1], ["prompt[:]"])["prompt[:]"][:, 0]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


# bitsandbytes' module per quantization, and the bound on the cosine of final-layer activations
# with the float32 model's. Measured on these tiny random models: 8-bit >= 0.999, 4-bit (NF4)
# 0.89-0.99 per prompt; an unrelated random model of the same shape scores about 0 (-0.1..0.1).
QUANT = {"8bit": ("Linear8bitLt", 0.99), "4bit": ("Linear4bit", 0.85)}


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: transformers' Conv1D layers become bitsandbytes ones too
def test_quantized_loads_and_runs_on_cpu(arch, quantization, tiny_root, tiny_loaded):
    import bitsandbytes as bnb

    full = tiny_loaded(arch)
    loaded = load_model(spec(arch, device="cpu", dtype="float32", quantization=quantization), tiny_root)
    module_name, bound = QUANT[quantization]
    cls = getattr(bnb.nn, module_name)
    blocks = A.decoder_layers(loaded.model)
    quantized = [m for block in blocks for m in block.modules() if isinstance(m, cls)]
    plain = [m for block in blocks for m in block.modules() if type(m) is torch.nn.Linear]
    assert len(quantized) >= 4 * len(blocks) and not plain  # every linear layer of every block
    if quantization == "8bit":
        assert all(m.weight.dtype == torch.int8 for m in quantized)
    else:
        assert all(m.weight.dtype == torch.uint8 and m.compute_dtype == torch.float32 for m in quantized)
    assert not isinstance(A.unembedding(loaded.model), cls)  # the head stays in full precision
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    assert loaded.n_layers == 3 and loaded.hidden_size == 64

    ids = prompt_ids(loaded, "Hello there")
    logits = _logits(loaded, ids)
    assert logits.shape == (len(ids), len(loaded.tokenizer)) and torch.isfinite(logits).all()
    acts = _final_layer(loaded)
    assert acts.shape == (len(TEXTS), 64) and torch.isfinite(acts).all()
    cos = _cosines(acts, _final_layer(full))
    assert cos.min() > bound, cos
    assert not torch.equal(acts, _final_layer(full))  # really another computation


def test_quantized_generation_on_cpu(tiny_root, tiny_model_dir):
    from traitflow.model.generate import generate

    tiny_model_dir("llama")
    loaded = load_model(spec("llama", device="cpu", quantization="8bit"), tiny_root)
    out = generate(loaded, [prompt_ids(loaded, text) for text in TEXTS[:2]], max_new_tokens=4, batch_size=2)
    assert len(out) == 2 and all(len(g.response_ids) <= 4 for g in out)


def test_4bit_computes_in_the_variant_dtype(tiny_root, tiny_model_dir):
    import bitsandbytes as bnb

    tiny_model_dir("qwen2")
    loaded = load_model(spec("qwen2", device="cpu", dtype="bfloat16", quantization="4bit"), tiny_root)
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.compute_dtype == torch.bfloat16 for m in layers)
    assert loaded.dtype == torch.bfloat16 and A.embedding(loaded.model).weight.dtype == torch.bfloat16
    assert torch.isfinite(_final_layer(loaded)).all()


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_lora_on_a_quantized_base(quantization, tiny_root, tiny_lora_dir, tiny_loaded):
    from peft import PeftModel

    tiny_lora_dir("llama")
    base = load_model(spec("llama", device="cpu", dtype="float32", quantization=quantization), tiny_root)
    lora = load_model(spec("llama", device="cpu", dtype="float32", quantization=quantization, lora="loras/llama"), tiny_root)
    assert isinstance(lora.model, PeftModel)
    wrapped = [m for m in lora.model.modules() if type(m).__module__ == "peft.tuners.lora.bnb"]
    assert len(wrapped) == 2 * 3  # q_proj and v_proj of each block: peft's bitsandbytes LoRA layers
    ids = prompt_ids(base, "Hello there")
    assert not torch.allclose(_logits(base, ids), _logits(lora, ids), atol=1e-3)
    # the adapter does to the quantized base what it does to the float32 one
    full_lora = tiny_loaded("llama", lora="loras/llama")
    assert _cosines(_final_layer(lora), _final_layer(full_lora)).min() > QUANT[quantization][1]


def test_quantization_without_bitsandbytes(tiny_root, tiny_model_dir, monkeypatch):
    import sys

    tiny_model_dir("llama")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when it is not installed
    with pytest.raises(TraitflowError, match="needs the bitsandbytes package") as info:
        load_model(spec("llama", quantization="4bit", device="cpu"), tiny_root)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- device_map: auto
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: auto places the model on the GPUs")
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_device_map_auto_without_gpus_is_cpu(quantization, tiny_root, tiny_loaded):
    full = tiny_loaded("llama")
    # `device` is ignored with device_map: auto (cuda does not exist here and is not an error)
    loaded = load_model(spec("llama", device="cuda", device_map="auto", dtype="float32", quantization=quantization), tiny_root)
    assert loaded.device == torch.device("cpu")
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    acts = _final_layer(loaded)
    if quantization == "none":
        torch.testing.assert_close(acts, _final_layer(full))
    else:
        assert _cosines(acts, _final_layer(full)).min() > QUANT[quantization][1]


def test_device_map_auto_dtype_and_cache_key(tiny_root, tiny_model_dir):
    tiny_model_dir("gpt2")
    cache = ModelCache()
    plain = cache.get(spec("gpt2", device="cpu"), tiny_root)
    mapped = cache.get(spec("gpt2", device="cpu", device_map="auto"), tiny_root)
    assert cache.loads == 2 and mapped.model is not plain.model
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    assert mapped.dtype == expected  # dtype auto follows the best device here, not `device`
    assert mapped.device == A.embedding(mapped.model).weight.device


@pytest.mark.parametrize("value", ["balanced", "cpu", "cuda:0", {"": "cpu"}, True])
def test_device_map_accepts_only_auto(value):
    from pydantic import ValidationError

    assert ModelSpec(model="m").device_map is None
    assert ModelSpec(model="m", device_map="auto").device_map == "auto"
    with pytest.raises(ValidationError, match="device_map"):
        ModelSpec(model="m", device_map=value)
