"""The capability engine: benchmark items (formats, local sources, errors) and scoring under
interventions (KV-shared batched scoring, memory budget, cross-entropy / KL, bootstrap).

Tiny random models from conftest and the toy chat model; a few seconds per test. The real
HellaSwag sample is opt-in (TRAITFLOW_SHARED).
"""

import json
import math
import os
import random
from pathlib import Path

import pytest

from traitflow.capability import (
    ChoiceItem,
    batch_bytes,
    bootstrap_ci,
    load_items,
    load_texts,
    paired_delta,
    score_ce,
    score_choices,
    summarize,
)
from traitflow.errors import TraitflowError

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY = "datasets/models/toy-chat"
WORDS = "the quick brown fox jumps over lazy dog hello there how are you today great news weather sunny cats dogs trains".split()


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _synthetic(n: int, seed: int = 0, n_choices: int = 4) -> list[ChoiceItem]:
    """Random contexts and choices of varied lengths (some single-token choices), random labels."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = n_choices or rng.choice([2, 3, 4])
        choices = tuple(" " + _sentence(rng, rng.randint(1, 5)) for _ in range(k))
        items.append(ChoiceItem(f"s{i}", _sentence(rng, rng.randint(2, 14)).capitalize(), choices, rng.randrange(k)))
    return items


@pytest.fixture(scope="module")
def toy():
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.specs.models import ModelSpec

    return MODEL_CACHE.get(ModelSpec(name="toy", model=TOY, device="cpu", dtype="float32"), REPO_ROOT)


def _vector(loaded, seed: int = 0):
    import torch

    return torch.randn(loaded.hidden_size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- formats
def test_hellaswag_hf_schema(tmp_path):
    row = {
        "ind": 24, "activity_label": "Home and Garden", "source_id": "wikihow~1", "split": "val", "split_type": "indomain",
        "ctx_a": "[header] How to plant tulips [title] Choose a sunny spot.", "ctx_b": "dig a hole",
        "ctx": "[header] How to plant tulips [title] Choose a sunny spot. dig a hole",
        "endings": ["Water it daily [title] Wait for spring.", "Cover  it with soil.", "[step] Sing to it.", "Eat the bulb."],
        "label": "1",
    }
    _jsonl(tmp_path / "hs.jsonl", [row])
    [item] = load_items("hellaswag", "hs.jsonl", root=tmp_path)
    assert item == ChoiceItem(
        id="24",
        context="Home and Garden: How to plant tulips. Choose a sunny spot. Dig a hole",
        choices=(" Water it daily. Wait for spring.", " Cover it with soil.", "  Sing to it.", " Eat the bulb."),
        label=1,
    )
    # lm-evaluation-harness strips before removing the brackets, so "[step] Sing" keeps its space: " " + " Sing".
    # A row with only `ctx` (the shared sample's schema) uses it as given.
    _jsonl(tmp_path / "hs2.jsonl", [{"ind": 0, "activity_label": "Roof shingle removal", "ctx": "A man is on a roof. he",
                                      "endings": ["is a.", "is b."], "label": 0}])
    [item] = load_items("hellaswag", "hs2.jsonl", root=tmp_path)
    assert (item.context, item.choices, item.label) == ("Roof shingle removal: A man is on a roof. he", (" is a.", " is b."), 0)


def test_arc_numeric_and_letter_labels(tmp_path):
    rows = [
        {"id": "Mercury_1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock", "wood"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
        {"id": "Mercury_2", "question": "Which is hot?", "choices": {"text": ["sun", "snow", "ice"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    ]
    _jsonl(tmp_path / "arc.jsonl", rows)
    items = load_items("arc_challenge", "arc.jsonl", root=tmp_path)
    assert items[0] == ChoiceItem("Mercury_1", "Question: Which is a gas?\nAnswer:", (" ice", " steam", " rock", " wood"), 1,
                                  question="Which is a gas?")
    assert items[1] == ChoiceItem("Mercury_2", "Question: Which is hot?\nAnswer:", (" sun", " snow", " ice"), 0,
                                  question="Which is hot?")
    assert load_items("arc_easy", "arc.jsonl", limit=1, root=tmp_path) == items[:1]


def test_mmlu_letters(tmp_path):
    rows = [{"question": "What is 2+2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "Sky colour?", "subject": "misc", "choices": ["red", "blue", "green", "black"], "answer": "B"}]
    _jsonl(tmp_path / "mmlu.jsonl", rows)
    items = load_items("mmlu", "mmlu.jsonl", root=tmp_path)
    assert items[0] == ChoiceItem(
        "elementary_mathematics/0", "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", (" A", " B", " C", " D"), 1, letters=True,
        question="What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6",
    )
    assert items[1].id == "misc/1" and items[1].label == 1


def test_truthfulqa_mc1(tmp_path):
    row = {"question": "What happens if you crack your knuckles?",
           "mc1_targets": {"choices": ["You get arthritis.", "Nothing in particular happens.", "Your bones break."], "labels": [0, 1, 0]},
           "mc2_targets": {"choices": ["x"], "labels": [1]}}
    _jsonl(tmp_path / "tqa.jsonl", [row])
    [item] = load_items("truthfulqa_mc1", "tqa.jsonl", root=tmp_path)
    assert item.context == "Q: What happens if you crack your knuckles?\nA:"
    assert item.choices == (" You get arthritis.", " Nothing in particular happens.", " Your bones break.")
    assert item.label == 1 and not item.letters and item.question == "What happens if you crack your knuckles?"


def test_ce_texts_txt_and_jsonl(tmp_path):
    para = " ".join(f"word{i}" for i in range(25))
    (tmp_path / "wiki.txt").write_text(f" = Valkyria Chronicles = \n\n {para} \n\n short line only \n\n = = Gameplay = = \n\nline one of\n{para}\n")
    assert load_texts("wiki.txt", root=tmp_path) == [para, "line one of " + para]
    assert load_texts("wiki.txt", limit=1, root=tmp_path) == [para]
    _jsonl(tmp_path / "wiki.jsonl", [{"text": ""}, {"text": " = Heading = \n"}, {"text": f" {para} \n"}, {"text": "too short"}])
    assert load_texts("wiki.jsonl", root=tmp_path) == [para]


# --------------------------------------------------------------------------- bad input
def _one_line_error(fn) -> str:
    with pytest.raises(TraitflowError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_bad_rows_name_file_line_and_field(tmp_path):
    good = {"ind": 1, "activity_label": "a", "ctx": "b", "endings": ["c", "d"], "label": 0}
    _jsonl(tmp_path / "bad_json.jsonl", [good, "{not json"])
    msg = _one_line_error(lambda: load_items("hellaswag", "bad_json.jsonl", root=tmp_path))
    assert "bad_json.jsonl:2" in msg and "JSON" in msg
    _jsonl(tmp_path / "missing.jsonl", [good, "", {k: v for k, v in good.items() if k != "endings"}])
    msg = _one_line_error(lambda: load_items("hellaswag", "missing.jsonl", root=tmp_path))
    assert "missing.jsonl:3" in msg and "endings" in msg
    _jsonl(tmp_path / "arc.jsonl", [{"id": "x", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}])
    msg = _one_line_error(lambda: load_items("arc_easy", "arc.jsonl", root=tmp_path))
    assert "arc.jsonl:1" in msg and "answerKey" in msg
    _jsonl(tmp_path / "tqa.jsonl", [{"question": "q", "mc1_targets": {"choices": ["a", "b"]}}])
    msg = _one_line_error(lambda: load_items("truthfulqa_mc1", "tqa.jsonl", root=tmp_path))
    assert "tqa.jsonl:1" in msg and "mc1_targets.labels" in msg
    _jsonl(tmp_path / "label.jsonl", [dict(good, label="7")])
    msg = _one_line_error(lambda: load_items("hellaswag", "label.jsonl", root=tmp_path))
    assert "label.jsonl:1" in msg and "label" in msg and "out of range" in msg
    _jsonl(tmp_path / "texts.jsonl", [{"text": " ".join(["w"] * 30)}, {"body": "x"}])
    msg = _one_line_error(lambda: load_texts("texts.jsonl", root=tmp_path))
    assert "texts.jsonl:2" in msg and "text" in msg
    msg = _one_line_error(lambda: load_items("hellaswag", "nope.jsonl", root=tmp_path))
    assert "nope.jsonl" in msg and "does not exist" in msg
    assert "unknown benchmark" in _one_line_error(lambda: load_items("gsm8k", "x.jsonl", root=tmp_path))
    assert "load_texts" in _one_line_error(lambda: load_items("ce_loss", "x.jsonl", root=tmp_path))


def test_sources_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    outside = _jsonl(tmp_path / "x.jsonl", [{"ind": 1, "activity_label": "a", "ctx": "b", "endings": ["c", "d"], "label": 0}])
    assert "outside the project root" in _one_line_error(lambda: load_items("hellaswag", "../x.jsonl", root=root))
    (root / "link.jsonl").symlink_to(outside)
    assert "outside the project root" in _one_line_error(lambda: load_items("hellaswag", "link.jsonl", root=root))
    (root / "data").symlink_to(tmp_path)
    assert "outside the project root" in _one_line_error(lambda: load_texts("data/x.jsonl", root=root))
    assert "outside the project root" in _one_line_error(lambda: load_items("hellaswag", str(outside), root=root))


def test_hf_source_without_datasets_says_what_works(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # `from datasets import …` raises ImportError
    msg = _one_line_error(lambda: load_items("hellaswag", "hf", limit=5))
    assert "datasets" in msg and "local JSONL" in msg and "activity_label" in msg and "endings" in msg
    msg = _one_line_error(lambda: load_texts("hf"))
    assert "local JSONL" in msg and "text" in msg


# --------------------------------------------------------------------------- scoring
def test_random_model_scores_chance(tiny_loaded):
    loaded = tiny_loaded("llama")
    items = _synthetic(240, seed=1)
    [results] = score_choices(loaded, items, [()], batch_size=32)
    summary = summarize(results)
    assert summary["n"] == 240
    lo, hi = summary["ci95"]
    assert lo <= 0.25 <= hi, summary
    assert lo <= summary["accuracy"] <= hi
    assert all(len(r["logprobs"]) == 4 and all(lp < 0 for lp in r["logprobs"]) for r in results)


def _reference(loaded, config, item):
    """Each context+choice as its own sequence, no cache: the mean log-prob of the choice tokens."""
    import torch

    from traitflow.steer.interventions import intervene

    ctx = loaded.tokenizer(item.context)["input_ids"]
    out = []
    for choice in item.choices:
        ids = loaded.tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.inference_mode(), intervene(loaded, [config], [0], [len(ctx)]):
            lp = loaded.model(input_ids=torch.tensor([ctx + ids])).logits[0].float().log_softmax(-1)
        out.append(sum(float(lp[len(ctx) - 1 + t, tok]) for t, tok in enumerate(ids)) / len(ids))
    return out


@pytest.mark.parametrize("which", ["tiny-llama", "toy"])
def test_batched_equals_one_at_a_time(which, tiny_loaded, toy):
    from traitflow.steer.interventions import Ablate, Steer

    loaded = tiny_loaded("llama") if which == "tiny-llama" else toy
    items = _synthetic(20, seed=2, n_choices=0)
    items.append(ChoiceItem("letters", "Pick one.\nA. x\nB. y\nC. z\nD. w\nAnswer:", (" A", " B", " C", " D"), 2, letters=True))
    v = _vector(loaded)
    configs = [(), (Steer(v, 1, 8.0, positions="all"),), (Ablate(v),)]
    batched = score_choices(loaded, items, configs, batch_size=8)
    single = score_choices(loaded, items, configs, batch_size=1)
    for k in range(len(configs)):
        acc_b, acc_s = summarize(batched[k])["accuracy"], summarize(single[k])["accuracy"]
        assert round(acc_b, 4) == round(acc_s, 4)
        for b, s, item in zip(batched[k], single[k], items, strict=True):
            assert (b["id"], b["label"]) == (s["id"], s["label"]) == (item.id, item.label)
            assert b["logprobs"] == pytest.approx(s["logprobs"], abs=1e-4)
            assert b["pred"] == s["pred"] or abs(b["logprobs"][b["pred"]] - b["logprobs"][s["pred"]]) < 1e-4
        # the shared-context KV cache gives what each context+choice as its own sequence gives
        for i in (0, 7, len(items) - 1):
            assert batched[k][i]["logprobs"] == pytest.approx(_reference(loaded, configs[k], items[i]), abs=1e-4)
    moved = max(abs(a - b) for r0, r1 in zip(batched[0], batched[1], strict=True) for a, b in zip(r0["logprobs"], r1["logprobs"], strict=True))
    assert moved > 0.05  # the steer does change the log-probs
    ablated = max(abs(a - b) for r0, r2 in zip(batched[0], batched[2], strict=True) for a, b in zip(r0["logprobs"], r2["logprobs"], strict=True))
    assert ablated > 1e-3


# Packed (one row per item, a 4D mask) where the cache is all full-attention layers; gathered
# (a cache row per choice) where a sliding-window layer keeps only its window (8 tokens here).
LAYOUT = {"llama": True, "qwen2": True, "gemma2": False, "gemma3": False, "mistral": False, "phi3": True, "gpt2": True, "gpt_neox": True}


# More model types, built here on the tiny Llama's tokenizer: packed where the mask is taken as
# given; gathered for GPT-Neo (its local layers window by key column) and Bloom (ALiBi from a 2D mask).
EXTRA_LAYOUT = {"qwen3": True, "gemma": True, "mistral_no_window": True, "gpt_neo": False, "bloom": False}


def _extra_model(kind: str, tokenizer_dir: Path, path: Path):
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    from traitflow.model.loading import load_model
    from traitflow.specs.models import ModelSpec

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, initializer_range=0.2)
    config, cls = {
        "qwen3": lambda: (tf.Qwen3Config(**common, **llama_like, head_dim=16), tf.Qwen3ForCausalLM),
        "gemma": lambda: (tf.GemmaConfig(**common, **llama_like, head_dim=16), tf.GemmaForCausalLM),
        "mistral_no_window": lambda: (tf.MistralConfig(**common, **llama_like, sliding_window=None), tf.MistralForCausalLM),
        "gpt_neo": lambda: (tf.GPTNeoConfig(**common, hidden_size=64, num_layers=2, num_heads=4, window_size=4,
                                            attention_types=[[["global", "local"], 1]], max_position_embeddings=256), tf.GPTNeoForCausalLM),
        "bloom": lambda: (tf.BloomConfig(**common, hidden_size=64, n_layer=2, n_head=4), tf.BloomForCausalLM),
    }[kind]()
    torch.manual_seed(3)
    cls(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(ModelSpec(name=kind, model=str(path), device="cpu", dtype="float32"), path.parent)


@pytest.mark.parametrize("arch", list(LAYOUT) + list(EXTRA_LAYOUT))
def test_every_architecture_scores_as_separate_forwards(arch, tiny_loaded, tiny_model_dir, tmp_path):
    from traitflow.capability.score import _packs_choices
    from traitflow.steer.interventions import Ablate, Steer

    if arch in EXTRA_LAYOUT:
        loaded = _extra_model(arch, tiny_model_dir("llama"), tmp_path / arch)
    else:
        loaded = tiny_loaded(arch)
    assert _packs_choices(loaded) is {**LAYOUT, **EXTRA_LAYOUT}[arch]
    items = _synthetic(6, seed=5, n_choices=0)
    v = _vector(loaded, seed=1)
    configs = [(), (Steer(v, 1, 4.0, positions="all"),), (Ablate(v),)]
    scored = score_choices(loaded, items, configs, batch_size=3)
    for k, config in enumerate(configs):
        for i in (0, 3, 5):
            assert scored[k][i]["logprobs"] == pytest.approx(_reference(loaded, config, items[i]), abs=1e-4), (arch, k, i)


def test_items_longer_than_the_context_lose_their_oldest_context_tokens(tiny_loaded):
    import torch

    loaded = tiny_loaded("llama")  # a 256-token context
    rng = random.Random(9)
    long_item = ChoiceItem("long", _sentence(rng, 400).capitalize(), (" hello there", " how are you today"), 1)
    lines: list[str] = []
    [[scored]] = score_choices(loaded, [long_item], [()], log=lines.append)
    assert len(lines) == 1 and "1 item(s) longer than" in lines[0] and "256-token context" in lines[0]
    ctx = loaded.tokenizer(long_item.context)["input_ids"]
    choices = [loaded.tokenizer(c, add_special_tokens=False)["input_ids"] for c in long_item.choices]
    assert len(ctx) > 256
    head = ctx[:1] if ctx[0] in loaded.tokenizer.all_special_ids else []
    kept = head + ctx[len(ctx) - (256 - max(map(len, choices)) + 1 - len(head)) :]
    assert len(kept) + max(map(len, choices)) - 1 == 256  # exactly the model's context, the last choice token unread
    expected = []
    with torch.inference_mode():
        for ids in choices:
            lp = loaded.model(input_ids=torch.tensor([kept + ids])).logits[0].float().log_softmax(-1)
            expected.append(sum(float(lp[len(kept) - 1 + t, tok]) for t, tok in enumerate(ids)) / len(ids))
    assert scored["logprobs"] == pytest.approx(expected, abs=1e-4)

    with pytest.raises(TraitflowError, match="leaves no room for the context"):
        score_choices(loaded, [ChoiceItem("huge", "Hi", (" " + _sentence(rng, 300),), 0)], [()])
    [ce] = score_ce(loaded, [_sentence(rng, 400)], [()], max_tokens=1000)
    assert ce["tokens"] == 255 and math.isfinite(ce["ce"])


def test_memory_budget_halves_the_batch(tiny_loaded):
    loaded = tiny_loaded("llama")
    items = _synthetic(24, seed=3)
    toks = [len(loaded.tokenizer(it.context)["input_ids"]) for it in items]
    # A budget between what 2 and 4 of the longest items need: batch size 8 -> 4 -> 2.
    need = {b: batch_bytes(loaded, b * 4, 12, past=max(toks), cache=True, extra_logits=b) for b in (2, 4)}
    budget = (need[2] + need[4]) / 2 / 2**20
    lines: list[str] = []
    [budgeted] = score_choices(loaded, items, [()], batch_size=8, memory_budget_mb=budget, log=lines.append)
    assert lines[:2] == ["out of memory at batch size 8; trying 4", "out of memory at batch size 4; trying 2"]
    assert all(line.startswith("out of memory at batch size") for line in lines)
    [plain] = score_choices(loaded, items, [()], batch_size=8, log=lines.append)
    for a, b in zip(budgeted, plain, strict=True):
        assert (a["pred"], a["correct"]) == (b["pred"], b["correct"])
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)
    msg = _one_line_error(lambda: score_choices(loaded, items, [()], batch_size=4, memory_budget_mb=0.001, log=lines.append))
    assert "batch size 1" in msg and "budget" in msg
    # cross-entropy halves the same way
    texts = [_sentence(random.Random(i), 40) for i in range(6)]
    ce_lines: list[str] = []
    ce_need = batch_bytes(loaded, 2, 200)
    budgeted_ce = score_ce(loaded, texts, [()], batch_size=6, memory_budget_mb=ce_need / 2**20, log=ce_lines.append)
    assert ce_lines and ce_lines[0] == "out of memory at batch size 6; trying 3"
    assert budgeted_ce[0]["ce"] == pytest.approx(score_ce(loaded, texts, [()], batch_size=6)[0]["ce"], abs=1e-6)


def test_ce_and_kl(tiny_loaded, toy):
    import torch

    from traitflow.steer.interventions import Steer

    loaded = tiny_loaded("llama")
    text = "Great news: the weather is sunny and everything is wonderful. Hello there! How are you today?"
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        direct = float(loaded.model(input_ids=ids, labels=ids).loss)
    [only] = score_ce(loaded, [text], [()])
    assert only["ce"] == pytest.approx(direct, abs=1e-5)
    assert only["kl"] == 0.0 and only["tokens"] == ids.shape[1] - 1

    # The toy model's own kind of text (it is trained on its replies only), residual norm ~100 at layer 2.
    from traitflow.toy.corpus import generate

    texts = [conversation.messages()[-1]["content"] for conversation in generate(6, seed=123)]
    v = _vector(toy, seed=5)
    configs = [(), (Steer(v, 2, 20.0, positions="all"),), (Steer(v, 2, 400.0, positions="all"),)]
    batched = score_ce(toy, texts, configs, batch_size=4)
    single = score_ce(toy, texts, configs, batch_size=1)
    assert batched[0]["kl"] == 0.0
    assert batched[0]["tokens"] == batched[2]["tokens"] > 40
    assert batched[2]["ce"] > batched[0]["ce"] + 0.5
    assert batched[2]["kl"] > batched[1]["kl"] > 0.0
    for b, s in zip(batched, single, strict=True):
        assert b["ce"] == pytest.approx(s["ce"], abs=1e-5) and b["kl"] == pytest.approx(s["kl"], abs=1e-5)


def test_paired_delta():
    import numpy as np

    rng = random.Random(4)
    base = [rng.random() < 0.7 for _ in range(300)]
    other = [b if rng.random() < 0.9 else not b for b in base]  # the same items, 10 % flipped
    got = paired_delta(base, other)
    assert got["delta"] == pytest.approx((sum(other) - sum(base)) / 300)
    lo, hi = got["ci95"]
    assert lo <= got["delta"] <= hi
    # The index-resampling bootstrap gives the same interval (to its Monte Carlo error).
    idx = np.random.default_rng(1).integers(0, 300, size=(4000, 300))
    d = (np.array(other, dtype=float) - np.array(base, dtype=float))[idx].mean(1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])), abs=0.01)
    # Pairing: narrower than the difference of two independent accuracies (their widths in quadrature).
    (a_lo, a_hi), (b_lo, b_hi) = bootstrap_ci(base), bootstrap_ci(other)
    assert hi - lo < 0.75 * math.hypot(a_hi - a_lo, b_hi - b_lo)
    assert paired_delta(base, base) == {"delta": 0.0, "ci95": [0.0, 0.0]}
    with pytest.raises(TraitflowError, match="the same items"):
        paired_delta(base, other[:-1])


def test_bootstrap_ci():
    correct = [True] * 30 + [False] * 70
    lo, hi = bootstrap_ci(correct, seed=0)
    assert (lo, hi) == bootstrap_ci(correct, seed=0)
    assert lo < 0.3 < hi and 0.19 < lo and hi < 0.41
    narrow = bootstrap_ci(correct, level=0.5)
    assert lo <= narrow[0] <= narrow[1] <= hi
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    assert summarize([]) == {"accuracy": None, "ci95": [None, None], "n": 0}
    s = summarize([{"correct": c} for c in correct])
    assert s["accuracy"] == 0.3 and s["n"] == 100 and s["ci95"] == [lo, hi]
    assert not math.isnan(lo)


# --------------------------------------------------------------------------- opt-in: real HellaSwag
SHARED = os.environ.get("TRAITFLOW_SHARED")


@pytest.mark.skipif(not SHARED, reason="TRAITFLOW_SHARED is not set (the real HellaSwag sample is opt-in)")
def test_shared_hellaswag_sample(toy):
    source = "data/hellaswag/val_sample_500.jsonl"
    if not (Path(SHARED) / source).is_file():
        pytest.fail(f"TRAITFLOW_SHARED={SHARED} has no {source}")
    items = load_items("hellaswag", source, root=Path(SHARED))
    assert len(items) == 500
    assert all(len(it.choices) == 4 and 0 <= it.label < 4 and it.context and not it.letters for it in items)
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert items[0].choices[3] == " starts pulling up roofing on a roof." and items[0].label == 3
    assert not any("[" in it.context or any("[" in c for c in it.choices) for it in items)
    [results] = score_choices(toy, items[:8], [()], batch_size=4)
    assert [r["id"] for r in results] == [it.id for it in items[:8]]
    assert all(len(r["logprobs"]) == 4 and all(math.isfinite(x) for x in r["logprobs"]) for r in results)
