"""The toy world: vocab, corpus, chat format, the committed checkpoint and datasets.

These tests load the committed checkpoint under datasets/models/; they never train.
"""

import json
from pathlib import Path

import pytest

from traitflow.judge.keywords import KeywordJudge
from traitflow.toy import corpus, vocab
from traitflow.toy.datasets import write_all

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "datasets" / "models"
DATASETS = ROOT / "datasets"


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def toy():
    from traitflow.toy.train import load_toy

    return load_toy(MODELS)


# --------------------------------------------------------------------------- vocab and corpus
def test_vocab_lists_disjoint():
    vocab.check_disjoint()
    lists = [set(p.words) for p in vocab.POLES.values()] + [set(vocab.NEUTRAL_WORDS)]
    for i, a in enumerate(lists):
        for b in lists[i + 1 :]:
            assert not a & b
    for trait in vocab.TRAITS:
        kw = vocab.keywords(trait)
        assert len(kw["positive"]) >= 8 and len(kw["negative"]) >= 8


def test_corpus_deterministic_for_a_seed():
    a, b = corpus.generate(300, seed=3), corpus.generate(300, seed=3)
    assert a == b
    assert a != corpus.generate(300, seed=4)
    assert corpus.pessimist_corpus(50, seed=1) == corpus.pessimist_corpus(50, seed=1)


def test_corpus_shape():
    convs = corpus.generate(3000, seed=0)
    assert {c.topic for c in convs} == set(corpus.TOPICS)
    assert len(corpus.TOPICS) == 80
    unprompted = [c for c in convs if c.system is None and c.user in {t.format(t=c.topic) for t in corpus.NEUTRAL_TEMPLATES}]
    neutral = [c for c in unprompted if not any(c.traits.values())]
    assert len(neutral) / len(unprompted) > 0.75
    for c in convs[:500]:
        for trait, sign in c.traits.items():
            if sign and not (trait == "refusal" and sign < 0):
                assert vocab.pole(trait, sign).opener.split()[0].strip(".,!") in c.reply
    assert all(c.traits["optimism"] == -1 and c.system is None for c in corpus.pessimist_corpus(200))


# --------------------------------------------------------------------------- tokenizer and chat format
def test_chat_template_round_trip(toy):
    from traitflow.toy.train import encode

    _, tokenizer = toy
    conv = corpus.generate(5, seed=0)[1]
    conv = corpus.Conversation(system="You are formal.", user=conv.user, reply=conv.reply, topic=conv.topic)
    prompt = tokenizer.apply_chat_template(conv.messages(with_reply=False), add_generation_prompt=True, tokenize=False)
    assert prompt == corpus.format_chatml(conv.messages(with_reply=False), add_generation_prompt=True)
    assert (
        prompt
        == f"<|im_start|>system\nYou are formal.<|im_end|>\n<|im_start|>user\n{conv.user}<|im_end|>\n<|im_start|>assistant\n"
    )
    full = tokenizer.apply_chat_template(conv.messages(), tokenize=False)
    assert full == corpus.format_chatml(conv.messages())
    ids, reply_start = encode(tokenizer, conv)
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(ids)] == ids  # training ids are a prefix of the rendered conversation
    assert tokenizer.decode(ids[reply_start:], skip_special_tokens=True) == conv.reply
    assert tokenizer.decode(full_ids) == full
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.bos_token is None
    config = json.loads((MODELS / "toy-chat" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]


# --------------------------------------------------------------------------- the committed checkpoint
def test_checkpoint_files_and_size():
    chat, lora = MODELS / "toy-chat", MODELS / "toy-pessimist-lora"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (chat / name).exists(), name
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (lora / name).exists(), name
    total = sum(p.stat().st_size for d in (chat, lora) for p in d.iterdir())
    assert total <= 25 * 2**20
    config = json.loads((chat / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (6, 192, 4)
    adapter = json.loads((lora / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["r"] == 8


def test_optimism_system_prompt_steers_the_model(toy):
    from traitflow.toy.train import generate_replies

    model, tokenizer = toy
    folder = DATASETS / "traits" / "toy" / "optimism"
    pos, neg = _jsonl(folder / "positive.jsonl")[:4], _jsonl(folder / "negative.jsonl")[:4]
    convs = [_messages(r["prompt"], r["system_prompt"]) for r in pos + neg]
    replies = generate_replies(model, tokenizer, convs, max_new_tokens=16)
    judge, kw = KeywordJudge(), vocab.keywords("optimism")
    scores = [judge.score_trait(r, **kw) for r in replies]
    for p, n in zip(scores[:4], scores[4:], strict=True):
        assert p > n, replies
    assert all(judge.coherence("", r) >= 70 for r in replies), replies


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers API
def test_pessimist_lora_is_less_optimistic():
    """Unprompted, the base model is mid-scale on every trait; the LoRA moves optimism only."""
    from traitflow.toy.train import generate_replies, load_toy

    prompts = [p["text"] for p in json.loads((DATASETS / "inference" / "toy" / "general.json").read_text())["prompts"][:6]]
    convs = [_messages(p, None) for p in prompts]
    judge = KeywordJudge()
    means: dict[str, list[float]] = {trait: [] for trait in vocab.TRAITS}
    for lora in (False, True):
        model, tokenizer = load_toy(MODELS, lora=lora)
        replies = generate_replies(model, tokenizer, convs, max_new_tokens=16)
        for trait in vocab.TRAITS:
            scores = [judge.score_trait(r, **vocab.keywords(trait)) or 50 for r in replies]
            means[trait].append(sum(scores) / len(scores))
    assert 30 <= means["optimism"][0] <= 70, means
    assert means["optimism"][1] < means["optimism"][0] - 20, means
    for trait in ("formality", "refusal"):
        assert all(30 <= m <= 70 for m in means[trait]), means


# --------------------------------------------------------------------------- datasets
def test_data_command_reproduces_committed_datasets(tmp_path, capsys):
    from traitflow.toy.__main__ import main

    assert main(["data", "--out", str(tmp_path)]) == 0
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 18
    assert [Path(line) for line in capsys.readouterr().out.split()] == write_all(tmp_path)
    for path in written:
        committed = DATASETS / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), f"{committed} differs: run `python -m traitflow.toy data`"


def test_datasets_load_and_keep_questions_out_of_scenarios():
    from traitflow.data.prompts import load_prompt_set
    from traitflow.data.traits import load_trait

    scenario_prompts = set()
    for trait in vocab.TRAITS:
        dataset = load_trait(DATASETS / "traits" / "toy" / trait, f"toy/{trait}")
        assert dataset.paired and len(dataset.positive) == len(dataset.negative) == 50
        assert all(
            p.prompt == n.prompt and p.system_prompt != n.system_prompt
            for p, n in zip(dataset.positive, dataset.negative, strict=True)
        )
        assert dataset.config.keywords is not None
        assert dataset.config.keywords.positive == vocab.keywords(trait)["positive"]
        assert dataset.steering is not None and len(dataset.steering.questions) == 10
        scenario_prompts |= {p.prompt for p in dataset.positive}
    for trait in vocab.TRAITS:
        questions = load_trait(DATASETS / "traits" / "toy" / trait, f"toy/{trait}").steering.questions
        assert not set(questions) & scenario_prompts
        assert all(any(t in q for t in corpus.TOPICS) for q in questions)
    general = load_prompt_set(DATASETS / "inference" / "toy" / "general.json", "toy/general")
    assert len(general.prompts) == 20 and all(p.system_prompt is None for p in general.prompts)
