"""Shared fixtures: tiny random-initialised models of every supported architecture.

Models are built offline (no hub): a small byte-level BPE tokenizer is trained in-process,
wrapped in a transformers fast tokenizer (with or without a chat template), and a 3-layer
random model per architecture is saved with ``save_pretrained`` under a session tmp dir.
Tests load them through ``traitflow.model.loading`` exactly as users' models load.

Fixtures (all session-scoped):
    tiny_root             the project root the tiny models live under
    tiny_model_dir(arch)  -> Path of the saved model (relative path: f"models/{arch}")
    tiny_lora_dir(arch)   -> Path of a saved LoRA adapter for it (non-zero B, so it changes outputs)
    tiny_loaded(arch)     -> LoadedModel through MODEL_CACHE
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

TINY_ARCHS = ("llama", "qwen2", "gemma2", "gemma3", "mistral", "phi3", "gpt2", "gpt_neox")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma-style: no system role.
NO_SYSTEM = (
    "<s>{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>model\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# which tokenizer flavour each architecture gets
TOKENIZER_KIND = {
    "llama": "chatml",
    "qwen2": "chatml",
    "gemma2": "nosystem",
    "gemma3": "chatml",
    "mistral": "plain",
    "phi3": "chatml",
    "gpt2": "plain",
    "gpt_neox": "plain",
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there! How are you today? I am fine, thank you.",
    "Great news: the weather is sunny and everything is wonderful.",
    "Certainly. Here is the answer you asked for, stated formally.",
    "I cannot help with that request, sorry.",
    "Be cheerful. Be gloomy. Be formal. Be casual. Tell me about cats, dogs and trains.",
    "system user assistant model",
]


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return tok


def _wrap_tokenizer(raw, kind: str):
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    raw = copy.deepcopy(raw)
    if kind == "plain":
        bos = raw.token_to_id("<s>")
        raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="<|endoftext|>")
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>",
            eos_token="<|im_end|>",
            additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        )
        tok.chat_template = CHATML if kind == "chatml" else NO_SYSTEM
    # no pad token on purpose: loading must fall back to eos
    return tok


def _config_and_class(arch: str, vocab: int, ids: dict):
    import transformers as tf

    common = dict(vocab_size=vocab, **ids)
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    if arch == "llama":
        return tf.LlamaConfig(**common, **llama_like), tf.LlamaForCausalLM
    if arch == "qwen2":
        return tf.Qwen2Config(**common, **llama_like), tf.Qwen2ForCausalLM
    if arch == "mistral":
        return tf.MistralConfig(**common, **llama_like, sliding_window=8), tf.MistralForCausalLM
    if arch == "phi3":
        return tf.Phi3Config(**common, **llama_like), tf.Phi3ForCausalLM
    if arch in ("gemma2", "gemma3"):
        gemma = dict(
            llama_like,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
        if arch == "gemma2":
            return tf.Gemma2Config(**common, **gemma), tf.Gemma2ForCausalLM
        return tf.Gemma3TextConfig(**common, **gemma), tf.Gemma3ForCausalLM
    if arch == "gpt2":
        cfg = tf.GPT2Config(**common, n_positions=256, n_embd=64, n_layer=3, n_head=4, initializer_range=0.2)
        return cfg, tf.GPT2LMHeadModel
    if arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            **common,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
            use_parallel_residual=True,
            initializer_range=0.2,
        )
        return cfg, tf.GPTNeoXForCausalLM
    raise KeyError(arch)


def build_tiny_model(arch: str, path: Path, seed: int = 0) -> Path:
    """Build and save a tiny random ``arch`` model with its tokenizer at ``path``."""
    import torch
    from transformers import GenerationConfig

    kind = TOKENIZER_KIND[arch]
    tokenizer = _wrap_tokenizer(_tokenizer_cache(), kind)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.convert_tokens_to_ids("<pad>"),
    )
    config, cls = _config_and_class(arch, len(tokenizer), ids)
    torch.manual_seed(seed + TINY_ARCHS.index(arch))
    model = cls(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"]
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


_RAW_TOKENIZER = []


def _tokenizer_cache():
    if not _RAW_TOKENIZER:
        _RAW_TOKENIZER.append(_train_tokenizer())
    return _RAW_TOKENIZER[0]


def build_tiny_lora(model_dir: Path, path: Path, seed: int = 0) -> Path:
    """A LoRA adapter on q/v projections (or the fused attention for GPT-2/NeoX), B non-zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    names = {type(m).__name__ for m in model.modules()}
    if "GPT2Attention" in names:
        targets = ["c_attn"]
    elif "GPTNeoXAttention" in names:
        targets = ["query_key_value"]
    elif any("Phi3" in n for n in names):
        targets = ["qkv_proj"]
    else:
        targets = ["q_proj", "v_proj"]
    torch.manual_seed(seed + 99)  # lora_A's initialisation draws from the global generator: the same adapter whatever ran before
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Project root for tiny models: models live at ``models/<arch>``, adapters at ``loras/<arch>``.

    Also limits torch to one intra-op thread: with tensors this small, a second thread only
    adds spin-wait overhead (~1000x slower per op on a busy 2-core machine).
    """
    import torch

    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("tiny_root")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_root) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, tiny_root / "models" / arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_root, tiny_model_dir) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_lora(tiny_model_dir(arch), tiny_root / "loras" / arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_loaded(tiny_root, tiny_model_dir):
    """``tiny_loaded(arch, **spec_fields)`` -> LoadedModel (through the process MODEL_CACHE)."""
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.models import ModelSpec

    def get(arch: str, **fields):
        tiny_model_dir(arch)
        spec = ModelSpec(name=arch, model=f"models/{arch}", device="cpu", dtype="float32", **fields)
        return MODEL_CACHE.get(spec, tiny_root)

    return get


# --------------------------------------------------------------------------- the vertical slice
# A project with two trait-interp-layout starter traits (written by tests/traitinterp.py) and the
# tiny Llama, materialized once per session through Dagster (tests/test_pipeline.py and
# tests/test_webserver.py read it).

SLICE_EXPERIMENT = """\
name: t
variants:
  chat: {model: models/llama, device: cpu}
  plain: {model: models/llama, device: cpu, chat_template: false}
traits: [starter/*]
extraction:
  position: ["prompt[-1]", "response[:3]"]
  methods: [probe, mean_diff]
  max_new_tokens: 4
steering:
  layers: "1"
  search: {steps: 2, questions: 2, max_new_tokens: 4}
inference:
  prompt_sets: [starter/general]
  layers: best,best+1
  max_new_tokens: 4
comparisons:
  - {a: chat, b: plain, prompt_set: starter/general}
"""


@pytest.fixture(scope="session")
def project_root(tmp_path_factory, tiny_model_dir) -> Path:
    import shutil

    from tests.traitinterp import write_prompt_set, write_starter_traits

    root = tmp_path_factory.mktemp("slice")
    shutil.copytree(tiny_model_dir("llama"), root / "models" / "llama")
    traits = root / "datasets" / "traits" / "starter"
    pole_words = {"optimism": "[hope, bright]\n  negative: [risk, worst]", "formal": "[therefore, regards]\n  negative: [hey, gonna]"}
    for name in write_starter_traits(traits, list(pole_words)):
        # Pole words for the keywords judge that scores the steering stage.
        (traits / name / "trait.yaml").write_text(f"keywords:\n  positive: {pole_words[name]}\n")
    write_prompt_set(root / "datasets" / "inference" / "starter" / "general.json")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "t.yaml").write_text(SLICE_EXPERIMENT)
    return root


@pytest.fixture(scope="session")
def dagster_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("dagster_home")
    # The default run coordinator launches GraphQL-submitted runs at once (no daemon needed).
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n")
    return home


@pytest.fixture(scope="session")
def materialized(project_root, dagster_home) -> dict:
    """Run the whole experiment once through Dagster, in process, counting model loads."""
    import dagster as dg

    from assets.runner import run_experiment
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.loader import load_project

    MODEL_CACHE.clear()
    loads_before = MODEL_CACHE.loads
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    summary = run_experiment(load_project(project_root), "t", stages=["all"], instance=instance)
    return {"summary": summary, "loads": MODEL_CACHE.loads - loads_before, "instance": instance, "home": dagster_home}




# --------------------------------------------------------------------------- the toy demo
# The shipped demo spec on the toy model, materialized once per session through Dagster (plus a
# "contrast" prompt set whose system prompts ask for each pole): tests/test_toy_demo.py,
# tests/test_steering_toy.py.
REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_TRAITS = ("toy/formality", "toy/optimism", "toy/refusal")


def contrast_prompt_set(root: Path) -> dict:
    """Each trait's steering questions (not used for extraction) under each pole's system prompt."""
    import json

    prompts, n = [], 0
    for trait in TOY_TRAITS:
        folder = root / "datasets" / "traits" / trait
        questions = json.loads((folder / "steering.json").read_text())["questions"][:6]
        for side in ("positive", "negative"):
            system = json.loads((folder / f"{side}.jsonl").read_text().splitlines()[0])["system_prompt"]
            for question in questions:
                n += 1
                prompts.append({"id": f"{trait}:{side}:{n}", "text": question, "system_prompt": system})
    return {"name": "toy contrast", "description": "each pole of each toy trait, on unseen questions", "prompts": prompts}


@pytest.fixture(scope="session")
def toy_demo(tmp_path_factory) -> dict:
    import json
    import shutil

    import dagster as dg

    from assets.runner import run_experiment
    from traitflow.report import build_report
    from traitflow.specs.loader import load_project

    root = tmp_path_factory.mktemp("toy_demo")
    shutil.copytree(REPO_ROOT / "specs", root / "specs")
    shutil.copytree(REPO_ROOT / "datasets", root / "datasets")
    (root / "datasets/inference/toy/contrast.json").write_text(json.dumps(contrast_prompt_set(root)))
    demo = (root / "specs/experiments/demo.yaml").read_text()
    (root / "specs/experiments/demo.yaml").write_text(demo.replace("prompt_sets: [toy/general]", "prompt_sets: [toy/general, toy/contrast]"))
    project = load_project(root, experiments=["demo"])
    # Kept: tests read the materializations' metadata from it (tests/test_metadata_links.py).
    instance = dg.DagsterInstance.ephemeral()
    summary = run_experiment(project, "demo", stages=["all"], instance=instance)
    return {"root": root, "project": project, "summary": summary, "report": build_report(project, "demo"),
            "instance": instance}




# --------------------------------------------------------------------------- a real S3 API
# moto's server over HTTP on localhost: tests/test_s3.py, tests/test_sync.py.
SECRET = "s3cr3t-that-must-never-show-up-4f9a"


def start_moto():
    """A moto S3 server on a free port; returns (process, endpoint URL) once it answers."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server and the environment a user would set for it (credentials included)."""
    import signal

    import boto3

    proc, url = start_moto()
    env = {"AWS_ACCESS_KEY_ID": "AKIATRAITFLOWTEST", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"url": url, "env": env, "client": boto3.client("s3"), "proc": proc}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
