"""Train the toy world: tokenizer, chat model and pessimist LoRA organism, on CPU, from a seed.

How to retrain (about 7 minutes on 2 idle CPU cores, 1200 steps at ~0.3 s, plus ~30 s for
the LoRA; several times that when other work shares the cores; writes ``<out>/toy-chat`` and
``<out>/toy-pessimist-lora`` atomically)::

    .venv/bin/python -m traitflow.toy train --out datasets/models --seed 0
    .venv/bin/python -m traitflow.toy train --skip-chat      # only the LoRA, over the existing model
    .venv/bin/python -m traitflow.toy verify                 # keyword-judge numbers of both

The tests load the committed checkpoint; after retraining, rerun ``pytest tests/test_toy.py``
and commit both folders. The datasets (``python -m traitflow.toy data``) do not depend on the
checkpoint. A fixed step count (not wall-clock) makes the result a function of the
seed; ``--minutes`` only caps the run (stopping early changes the result and says so).

What is trained:

- Tokenizer: byte-level BPE (``tokenizers``) on the corpus, ~1.4k tokens, special tokens
  ``<|pad|>`` ``<|im_start|>`` ``<|im_end|>`` (eos), no BOS, ChatML ``chat_template`` in
  ``tokenizer_config.json`` (identical to :func:`traitflow.toy.corpus.format_chatml`).
- Chat model: ``LlamaConfig`` 6 layers, hidden 192, intermediate 512, 4 heads (4 kv heads),
  256 positions, untied input/output embeddings (so the logit lens reads a real ``lm_head``),
  ~3.2M parameters, float32. AdamW (lr 2e-3, warmup then cosine), batch 32, sequences
  <= 128 tokens, loss on assistant tokens (the reply and its ``<|im_end|>``) only.
- Organism: PEFT LoRA (r=8, alpha 16) on ``q_proj``/``v_proj``, trained on unprompted
  conversations whose replies are all pessimistic (:func:`traitflow.toy.corpus.pessimist_corpus`),
  saved with ``save_pretrained``; ``base_model_name_or_path`` is the relative path ``toy-chat``.
"""

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from traitflow.toy import corpus

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
MAX_LEN = 128
BASE_NAME = "toy-chat"
LORA_NAME = "toy-pessimist-lora"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a training run (with the seed)."""

    seed: int = 0
    n_conversations: int = 60_000
    vocab_size: int = 1400
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 6
    num_heads: int = 4
    max_positions: int = 256
    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    lora_steps: int = 150
    lora_lr: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_conversations: int = 6_000
    threads: int = 2


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE on ``texts`` wrapped as a transformers fast tokenizer with the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        model_max_length=MAX_LEN * 2,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save with the chat template inside tokenizer_config.json, plus a special_tokens_map.json."""
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    special = {"eos_token": IM_END, "pad_token": PAD, "additional_special_tokens": [IM_START]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def encode(tokenizer, conversation: corpus.Conversation) -> tuple[list[int], int]:
    """Token ids of a whole conversation (minus the final newline) and the reply's start index.

    The prompt is encoded exactly as ``apply_chat_template(..., add_generation_prompt=True)``
    renders it, so training sees the generation-time format.
    """
    return encode_many(tokenizer, [conversation])[0]


def encode_many(tokenizer, conversations: list[corpus.Conversation]) -> list[tuple[list[int], int]]:
    """:func:`encode` for many conversations at once (batched in the Rust tokenizer)."""
    prompts = [corpus.format_chatml(c.messages(with_reply=False), add_generation_prompt=True) for c in conversations]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer([c.reply + IM_END for c in conversations], add_special_tokens=False)["input_ids"]
    return [(p + r, len(p)) for p, r in zip(prompt_ids, reply_ids, strict=True)]


# --------------------------------------------------------------------------- batches
class Batches:
    """Endless shuffled, length-bucketed padded batches; labels only on reply tokens.

    Each epoch is shuffled, cut into groups of 64 batches, each group sorted by length and cut
    into batches (so padding stays small), and the batches are shuffled again.
    """

    def __init__(self, examples: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int):
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.rng = random.Random(seed)

    def _epoch(self) -> list[list[int]]:
        order = list(range(len(self.examples)))
        self.rng.shuffle(order)
        group = self.batch_size * 64
        batches = []
        for g in range(0, len(order), group):
            chunk = sorted(order[g : g + group], key=lambda i: len(self.examples[i][0]))
            for start in range(0, len(chunk) - self.batch_size + 1, self.batch_size):
                batches.append(chunk[start : start + self.batch_size])
        self.rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[dict]:
        import torch

        while True:
            for indices in self._epoch():
                chunk = [self.examples[i] for i in indices]
                width = max(len(ids) for ids, _ in chunk)
                input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (ids, reply_start) in enumerate(chunk):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    labels[row, reply_start : len(ids)] = torch.tensor(ids[reply_start:])
                    mask[row, : len(ids)] = 1
                yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _optimize(
    model, params, batches: Batches, steps: int, lr: float, warmup: int, weight_decay: float, deadline: float | None, label: str
) -> tuple[float, int]:
    """AdamW + warmup/cosine for ``steps`` steps; returns (mean loss of the last 50 steps, steps done)."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, warmup))
    model.train()
    recent: list[float] = []
    start = time.time()
    done = 0
    for step, batch in zip(range(steps), batches, strict=False):
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        recent = (recent + [loss.item()])[-50:]
        done = step + 1
        if done % 50 == 0 or done == steps:
            print(f"[{label}] step {done}/{steps} loss {sum(recent) / len(recent):.3f} ({time.time() - start:.0f}s)", flush=True)
        if deadline is not None and time.time() > deadline:
            print(f"[{label}] stopped at step {done}/{steps}: --minutes cap reached (result is not the seeded one)", flush=True)
            break
    model.eval()
    return sum(recent) / max(1, len(recent)), done


# --------------------------------------------------------------------------- atomic folders
@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- training
def train_chat_model(out: Path, config: TrainConfig, deadline: float | None = None) -> dict:
    """Train tokenizer and chat model; write ``out/toy-chat``. Returns a summary dict."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    t0 = time.time()
    conversations = corpus.generate(config.n_conversations, config.seed)
    tokenizer = train_tokenizer([corpus.format_chatml(c.messages()) for c in conversations], config.vocab_size)
    examples = encode_many(tokenizer, conversations)
    kept = [e for e in examples if len(e[0]) <= MAX_LEN]
    print(f"[toy-chat] {len(conversations)} conversations, {len(kept)} <= {MAX_LEN} tokens, vocab {len(tokenizer)}", flush=True)

    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = LlamaForCausalLM(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[toy-chat] {n_params / 1e6:.2f}M parameters, {config.steps} steps of {config.batch_size}", flush=True)
    batches = Batches(kept, config.batch_size, pad_id, config.seed)
    loss, done = _optimize(
        model,
        list(model.parameters()),
        batches,
        config.steps,
        config.lr,
        config.warmup,
        config.weight_decay,
        deadline,
        "toy-chat",
    )
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, do_sample=False, max_new_tokens=32
    )
    target = out / BASE_NAME
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    seconds = time.time() - t0
    print(f"[toy-chat] wrote {target} (final loss {loss:.3f}, {seconds:.0f}s)", flush=True)
    return {"final_loss": loss, "steps": done, "seconds": seconds, "parameters": n_params}


def train_lora(out: Path, config: TrainConfig, deadline: float | None = None) -> dict:
    """Train the pessimist organism over ``out/toy-chat``; write ``out/toy-pessimist-lora``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + 1)
    t0 = time.time()
    base_dir = out / BASE_NAME
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_config)
    conversations = corpus.pessimist_corpus(config.lora_conversations, config.seed + 1)
    examples = [e for e in encode_many(tokenizer, conversations) if len(e[0]) <= MAX_LEN]
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = Batches(examples, config.batch_size, pad_id, config.seed + 1)
    loss, done = _optimize(model, params, batches, config.lora_steps, config.lora_lr, 10, 0.0, deadline, "lora")
    target = out / LORA_NAME
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        adapter_config = tmp / "adapter_config.json"
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = BASE_NAME
        data["target_modules"] = sorted(data["target_modules"])  # a set in PEFT: fix the order
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        readme = tmp / "README.md"
        if readme.exists():
            readme.unlink()
    seconds = time.time() - t0
    print(f"[lora] wrote {target} (final loss {loss:.3f}, {seconds:.0f}s)", flush=True)
    return {"final_loss": loss, "steps": done, "seconds": seconds}


def train_all(out: Path, config: TrainConfig, minutes: float | None = None) -> dict:
    """Chat model, then LoRA organism; returns both summaries."""
    deadline = time.time() + 60 * minutes if minutes else None
    chat = train_chat_model(out, config, deadline)
    lora = train_lora(out, config, deadline)
    return {"chat": chat, "lora": lora}


# --------------------------------------------------------------------------- checks
def load_toy(models: Path, lora: bool = False):
    """(model, tokenizer) of the committed toy chat model, optionally with the pessimist LoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models / BASE_NAME)
    model = AutoModelForCausalLM.from_pretrained(models / BASE_NAME, dtype=torch.float32)
    if lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, models / LORA_NAME)
    model.eval()
    return model, tokenizer


def generate_replies(
    model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int = 24, batch_size: int = 32
) -> list[str]:
    """Greedy replies to chat ``conversations`` (lists of messages), batched with left padding."""
    import torch

    tokenizer.padding_side = "left"
    replies: list[str] = []
    for start in range(0, len(conversations), batch_size):
        texts = [
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            for messages in conversations[start : start + batch_size]
        ]
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, batch["input_ids"].shape[1] :]
        replies.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return replies


def verify(models: Path, datasets: Path, max_new_tokens: int = 24) -> dict:
    """Keyword-judge numbers of the toy models, greedy decoding.

    For the base model and the pessimist LoRA: ``separation`` (per trait, replies under the
    positive vs negative system prompts of the trait's jsonl pairs: share of pairs scoring
    positive > negative, mean scores, coherence) and ``unprompted`` (replies without a system
    prompt to the toy/general prompt set plus every steering question: mean score per trait and
    the share of replies scoring 30-70).
    """
    import statistics

    import torch

    from traitflow.judge.keywords import KeywordJudge
    from traitflow.toy import vocab

    torch.set_num_threads(2)
    judge = KeywordJudge()

    def messages(prompt: str, system: str | None) -> list[dict[str, str]]:
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    def score(replies: list[str], trait: str) -> list[float]:
        return [judge.score_trait(a, **vocab.keywords(trait)) or 50.0 for a in replies]

    pairs = {}
    for trait in vocab.TRAITS:
        folder = datasets / "traits" / "toy" / trait
        pairs[trait] = {
            side: [json.loads(line) for line in (folder / f"{side}.jsonl").read_text().splitlines() if line.strip()]
            for side in ("positive", "negative")
        }
    prompt_set = json.loads((datasets / "inference" / "toy" / "general.json").read_text())
    prompts = [p["text"] for p in prompt_set["prompts"]]
    for trait in vocab.TRAITS:
        prompts += json.loads((datasets / "traits" / "toy" / trait / "steering.json").read_text())["questions"]

    report: dict = {"n_unprompted_prompts": len(prompts), "max_new_tokens": max_new_tokens}
    for variant, lora in (("base", False), ("pessimist", True)):
        model, tokenizer = load_toy(models, lora=lora)
        separation = {}
        for trait in vocab.TRAITS:
            replies = {
                side: generate_replies(
                    model, tokenizer, [messages(r["prompt"], r["system_prompt"]) for r in rows], max_new_tokens
                )
                for side, rows in pairs[trait].items()
            }
            pos, neg = score(replies["positive"], trait), score(replies["negative"], trait)
            separation[trait] = {
                "pair_accuracy": sum(p > n for p, n in zip(pos, neg, strict=True)) / len(pos),
                "mean_positive": round(statistics.mean(pos), 1),
                "mean_negative": round(statistics.mean(neg), 1),
                "mean_coherence": round(
                    statistics.mean(judge.coherence("", a) for a in replies["positive"] + replies["negative"]), 1
                ),
                "example_positive": replies["positive"][0],
                "example_negative": replies["negative"][0],
            }
        replies = generate_replies(model, tokenizer, [messages(p, None) for p in prompts], max_new_tokens)
        unprompted: dict = {}
        for trait in vocab.TRAITS:
            scores = score(replies, trait)
            unprompted[trait] = {
                "mean": round(statistics.mean(scores), 1),
                "mid_scale_share": round(sum(30 <= s <= 70 for s in scores) / len(scores), 2),
            }
        unprompted["mean_coherence"] = round(
            statistics.mean(judge.coherence(q, a) for q, a in zip(prompts, replies, strict=True)), 1
        )
        unprompted["examples"] = replies[:3]
        report[variant] = {"separation": separation, "unprompted": unprompted}
    return report
