"""Benchmark items: multiple-choice questions and neutral texts, from the Hugging Face hub or local files.

Every benchmark has one row formatter, applied to hub rows and local JSONL rows alike, so a local
file in the dataset's own schema scores exactly as the hub copy would. The formats follow
lm-evaluation-harness (zero-shot):

- ``hellaswag`` (``Rowan/hellaswag``, validation): context
  ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` (a row without
  ``ctx_a``/``ctx_b`` uses its ``ctx``), choices ``" " + preprocess(ending)``, label
  ``int(label)`` (the hub gives it as a string). ``preprocess`` strips, turns ``" [title]"``
  into ``". "``, removes WikiHow's ``[header]``-style bracket artefacts and collapses double spaces.
- ``arc_easy`` / ``arc_challenge`` (``allenai/ai2_arc``, test): context
  ``"Question: {question}\\nAnswer:"``, choices ``" " + text``, label the index of ``answerKey``
  in ``choices.label`` (letters A–E or digits 1–5, both occur).
- ``mmlu`` (``cais/mmlu``, config ``all``, test): context
  ``"{question}\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer:"``, choices ``(" A", " B", " C", " D")``,
  ``letters=True`` (scored from the last context position's logits), label ``answer``.
- ``truthfulqa_mc1`` (``truthfulqa/truthful_qa``, config ``multiple_choice``, validation):
  context ``"Q: {question}\\nA:"``, choices ``" " + c`` for ``mc1_targets.choices``, label the
  index of the 1 in ``mc1_targets.labels``. (lm-evaluation-harness also prepends a six-shot QA
  primer; this zero-shot form does not.)
- ``ce_loss`` (``Salesforce/wikitext``, ``wikitext-2-raw-v1``, test): neutral paragraphs for the
  cross-entropy / KL cost of an intervention, see :func:`load_texts`.

A ``source`` is ``"hf"`` (``datasets.load_dataset``, imported only then) or a path relative to
the project root: a JSONL file with one row per line in the hub dataset's schema (``ce_loss``
also takes a ``.txt`` file of paragraphs). Every problem is one line: a missing ``datasets``
package or an unreachable hub names the local alternative and its fields; a bad local row names
the file, the line and the field (a :class:`~traitflow.errors.SpecError`).

Example:
    >>> items = load_items("arc_easy", "datasets/bench/arc_easy.jsonl", limit=200, root=root)
    >>> items[0].context, items[0].choices, items[0].label
    ('Question: Which ...?\\nAnswer:', (' a rock', ' a tree', ...), 2)
"""

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitflow.data.files import check_inside, parse_json, read_text
from traitflow.errors import SpecError, TraitflowError

__all__ = ["BENCHMARKS", "MIN_WORDS", "Benchmark", "ChoiceItem", "format_row", "hellaswag_preprocess", "load_items", "load_texts"]

MIN_WORDS = 20  # a ce_loss paragraph needs at least this many words (drops captions, list stubs)
MAX_SOURCE_BYTES = 512 * 1024 * 1024  # a local benchmark file (MMLU's test split is ~8 MB as JSONL)


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item.

    Attributes:
        id: stable identifier (the dataset's id, or ``<subject>/<n>`` / the row number).
        context: the text every choice continues.
        choices: the continuations, each with its leading space (``" Paris"``).
        label: index of the correct choice.
        letters: MMLU style: each choice is one answer letter (``" A"``), scored by one forward
            pass over the context (the letters' log-probs at the last position). The scorer
            sees this from the tokens themselves (every choice one token); a tokenizer that
            splits a letter gets it scored like any other multi-token choice.
        question: what a chat model is asked (``chat_template: true``): the bare question, without
            the harness's ``Question:``/``Answer:`` scaffolding (None: the context itself).
        context_ids: the context's token ids when given (a chat-templated question,
            :func:`as_chat`); None: the scorer tokenises ``context``.
    """

    id: str
    context: str
    choices: tuple[str, ...]
    label: int
    letters: bool = False
    question: str | None = None
    context_ids: tuple[int, ...] | None = None


def as_chat(loaded: Any, items: list["ChoiceItem"]) -> list["ChoiceItem"]:
    """The items as a chat model is asked them (``chat_template: true``): the question is the user's
    message through the variant's chat template, exactly as steering questions are
    (:func:`traitflow.model.chat.prompt_ids`), and each choice is the reply's start (its leading
    space dropped: a reply begins the assistant's turn)."""
    from dataclasses import replace

    from traitflow.model.chat import prompt_ids

    return [replace(it, context_ids=tuple(prompt_ids(loaded, it.question or it.context)),
                    choices=tuple(c.lstrip() for c in it.choices)) for it in items]


class _RowError(Exception):
    """A row formatter's complaint: the field and what is wrong (the caller adds file and line)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def _get(row: dict[str, Any], path: str) -> Any:
    """``row["a"]["b"]`` for ``path`` ``"a.b"``; a _RowError naming the field when it is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _RowError(path, "missing")
        value = value[part]
    return value


def _text(row: dict[str, Any], path: str) -> str:
    value = _get(row, path)
    if not isinstance(value, str):
        raise _RowError(path, f"expected a string, got {type(value).__name__}")
    return value


def _strings(row: dict[str, Any], path: str, at_least: int = 2) -> list[str]:
    value = _get(row, path)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _RowError(path, "expected a list of strings")
    if len(value) < at_least:
        raise _RowError(path, f"expected at least {at_least} entries, got {len(value)}")
    return value


def _index(value: Any, n: int, field: str) -> int:
    """An integer label (int, or a string of digits as the hub stores HellaSwag's) in ``[0, n)``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _RowError(field, f"expected an integer, got {value!r}")
    try:
        index = int(value)
    except ValueError:
        raise _RowError(field, f"expected an integer, got {value!r}") from None
    if not 0 <= index < n:
        raise _RowError(field, f"{index} is out of range for {n} choices")
    return index


# --------------------------------------------------------------------------- row formatters
def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag clean-up: strip, ``" [title]"`` -> ``". "``, drop
    ``[...]`` bracket artefacts (WikiHow's ``[header]``, ``[step]``), collapse double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict[str, Any], n: int) -> ChoiceItem:
    activity = _text(row, "activity_label")
    if "ctx_a" in row or "ctx_b" in row:
        ctx = _text(row, "ctx_a") + " " + _text(row, "ctx_b").capitalize()
    else:
        ctx = _text(row, "ctx")
    endings = _strings(row, "endings")
    label = _index(_get(row, "label"), len(endings), "label")
    ident = row.get("ind", n)
    return ChoiceItem(
        id=str(ident),
        context=hellaswag_preprocess(activity + ": " + ctx),
        choices=tuple(" " + hellaswag_preprocess(e) for e in endings),
        label=label,
    )


def _arc(row: dict[str, Any], n: int) -> ChoiceItem:
    question = _text(row, "question")
    texts = _strings(row, "choices.text")
    keys = _get(row, "choices.label")
    if not isinstance(keys, list) or len(keys) != len(texts):
        raise _RowError("choices.label", f"expected a list of {len(texts)} labels, one per choices.text entry")
    keys = [str(k) for k in keys]
    answer = str(_get(row, "answerKey"))
    if answer not in keys:
        raise _RowError("answerKey", f"{answer!r} is not one of the choice labels {keys}")
    return ChoiceItem(
        id=str(row.get("id", n)),
        context=f"Question: {question}\nAnswer:",
        choices=tuple(" " + t for t in texts),
        label=keys.index(answer),
        question=question,
    )


_LETTERS = "ABCDEFGHIJ"


def _mmlu(row: dict[str, Any], n: int) -> ChoiceItem:
    question = _text(row, "question").strip()
    options = _strings(row, "choices")
    if len(options) > len(_LETTERS):
        raise _RowError("choices", f"at most {len(_LETTERS)} choices, got {len(options)}")
    letters = _LETTERS[: len(options)]
    answer = _get(row, "answer")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in letters:
        answer = letters.index(answer.strip().upper())  # some copies store the letter, the hub an index
    label = _index(answer, len(options), "answer")
    lines = [question] + [f"{letter}. {option}" for letter, option in zip(letters, options, strict=True)]
    subject = row.get("subject")
    return ChoiceItem(
        id=f"{subject}/{n}" if isinstance(subject, str) and subject else str(n),
        context="\n".join(lines) + "\nAnswer:",
        choices=tuple(" " + letter for letter in letters),
        label=label,
        letters=True,
        question="\n".join(lines),
    )


def _truthfulqa_mc1(row: dict[str, Any], n: int) -> ChoiceItem:
    question = _text(row, "question")
    choices = _strings(row, "mc1_targets.choices")
    labels = _get(row, "mc1_targets.labels")
    if not isinstance(labels, list) or len(labels) != len(choices) or sorted(labels) != [0] * (len(labels) - 1) + [1]:
        raise _RowError("mc1_targets.labels", f"expected {len(choices)} labels with exactly one 1")
    return ChoiceItem(
        id=str(row.get("id", n)),
        context=f"Q: {question}\nA:",
        choices=tuple(" " + c for c in choices),
        label=labels.index(1),
        question=question,
    )


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the hub and how its rows become items.

    Attributes:
        hf_path, hf_config, split: the ``datasets.load_dataset`` arguments.
        fields: the row fields a local JSONL needs (named in error messages).
        format: ``format(row, n) -> ChoiceItem`` (None for ``ce_loss``, whose rows are texts).
    """

    hf_path: str
    hf_config: str | None
    split: str
    fields: str
    format: Callable[[dict[str, Any], int], ChoiceItem] | None


BENCHMARKS: dict[str, Benchmark] = {
    "hellaswag": Benchmark("Rowan/hellaswag", None, "validation", "activity_label, ctx_a and ctx_b (or ctx), endings, label", _hellaswag),
    "arc_easy": Benchmark("allenai/ai2_arc", "ARC-Easy", "test", "id, question, choices {text, label}, answerKey", _arc),
    "arc_challenge": Benchmark("allenai/ai2_arc", "ARC-Challenge", "test", "id, question, choices {text, label}, answerKey", _arc),
    "mmlu": Benchmark("cais/mmlu", "all", "test", "question, subject, choices, answer", _mmlu),
    "truthfulqa_mc1": Benchmark("truthfulqa/truthful_qa", "multiple_choice", "validation", "question, mc1_targets {choices, labels}", _truthfulqa_mc1),
    "ce_loss": Benchmark("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text (or a .txt file of paragraphs separated by blank lines)", None),
}


def format_row(name: str, row: dict[str, Any], n: int = 0) -> ChoiceItem:
    """One row of benchmark ``name`` (hub schema) as a :class:`ChoiceItem`; ``n`` is its row
    number (the id when the row has none). Raises TraitflowError naming the bad field."""
    bench = _benchmark(name)
    if bench.format is None:
        raise TraitflowError(f"benchmark {name!r} has texts, not choice items: use load_texts")
    try:
        return bench.format(row, n)
    except _RowError as exc:
        raise TraitflowError(f"benchmark {name!r}, row {n}: {exc.field}: {exc.message}") from None


# --------------------------------------------------------------------------- sources
def _benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise TraitflowError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _hf_rows(name: str) -> Iterator[dict[str, Any]]:
    """The hub split's rows. The import is lazy; a project root with a ``datasets/`` folder makes
    ``import datasets`` find that namespace package instead, hence ``from datasets import
    load_dataset`` (an ImportError either way when the library is missing)."""
    bench = _benchmark(name)
    local = f"or give a local JSONL in the dataset's schema (fields: {bench.fields}) as the source"
    try:
        from datasets import load_dataset
    except ImportError:
        raise TraitflowError(
            f"benchmark {name!r}: source 'hf' needs the Hugging Face datasets package (pip install datasets), {local}"
        ) from None
    try:
        if bench.hf_config is None:
            data = load_dataset(bench.hf_path, split=bench.split)
        else:
            data = load_dataset(bench.hf_path, bench.hf_config, split=bench.split)
    except Exception as exc:  # noqa: BLE001 - connection errors, missing repos, gated datasets: all one line
        raise TraitflowError(
            f"benchmark {name!r}: cannot load {bench.hf_path} ({bench.hf_config or 'default'}, {bench.split}) "
            f"from the Hugging Face hub ({_first_line(exc)}); {local}"
        ) from None
    yield from data


def _local_path(source: str, root: Path) -> Path:
    """``root / source`` resolved, refused when it (or a symlink on the way) leads outside ``root``."""
    root = Path(root)
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = root / path
    check_inside(path, root)
    return path


def _jsonl_rows(path: Path, root: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each non-blank line of a JSONL file inside ``root``."""
    text = read_text(path, root, limit=MAX_SOURCE_BYTES)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = parse_json(line, path, line=number)
        if not isinstance(row, dict):
            raise SpecError(path, f"expected a JSON object per line, got {type(row).__name__}", line=number)
        yield number, row


def _take(items: Iterable[Any], limit: int | None) -> Iterator[Any]:
    if limit is not None and limit < 0:
        raise TraitflowError(f"limit must be at least 0, got {limit}")
    for n, item in enumerate(items):
        if limit is not None and n >= limit:
            return
        yield item


def load_items(name: str, source: str, limit: int | None = None, root: Path | str = ".") -> list[ChoiceItem]:
    """The first ``limit`` items (all when None) of multiple-choice benchmark ``name``.

    Args:
        name: a key of :data:`BENCHMARKS` other than ``ce_loss``.
        source: ``"hf"`` for the hub, else a JSONL path relative to ``root`` (rows in the hub
            dataset's schema; blank lines are skipped).
        limit: how many items, in file / split order (deterministic).
        root: the project root; a local source may not lead outside it (symlinks resolved).

    Raises:
        TraitflowError (one line): unknown benchmark; ``datasets`` missing or the hub
        unreachable; a local file outside the root, missing, not JSON on a line, or a row missing
        a field (a SpecError naming file, line and field).
    """
    bench = _benchmark(name)
    if bench.format is None:
        raise TraitflowError(f"benchmark {name!r} has texts, not choice items: use load_texts")
    if source == "hf":
        items = []
        for n, row in enumerate(_take(_hf_rows(name), limit)):
            try:
                items.append(bench.format(row, n))
            except _RowError as exc:
                raise SpecError(f"hf:{bench.hf_path}/{bench.split}", exc.message, line=n + 1, field=exc.field) from None
        return items
    path = _local_path(source, Path(root))
    items = []
    for n, (number, row) in enumerate(_take(_jsonl_rows(path, Path(root)), limit)):
        try:
            items.append(bench.format(row, n))
        except _RowError as exc:
            raise SpecError(path, exc.message, line=number, field=exc.field) from None
    return items


_HEADING = re.compile(r"^\s*=.*=\s*$")


def _keep(text: str) -> str | None:
    """A paragraph worth scoring: stripped, not a WikiText ``" = Heading = "`` line, >= MIN_WORDS words."""
    text = text.strip()
    if not text or _HEADING.match(text):
        return None
    return text if len(text.split()) >= MIN_WORDS else None


def load_texts(source: str, limit: int | None = None, root: Path | str = ".") -> list[str]:
    """The first ``limit`` neutral paragraphs for ``ce_loss``.

    ``source`` is ``"hf"`` (WikiText-2 raw, test: one row per line of the corpus), a ``.txt``
    file (paragraphs separated by blank lines; a paragraph's lines are joined with spaces) or a
    JSONL file of ``{"text": ...}`` rows, relative to ``root``. Empty lines and WikiText's
    ``" = Heading = "`` lines are dropped, and so is any paragraph under :data:`MIN_WORDS`
    words. Errors as :func:`load_items`.
    """
    if source == "hf":
        candidates: Iterable[str | None] = (
            _keep(row["text"]) if isinstance(row.get("text"), str) else None for row in _hf_rows("ce_loss")
        )
    else:
        root = Path(root)
        path = _local_path(source, root)
        if path.suffix.lower() == ".txt":
            text = read_text(path, root, limit=MAX_SOURCE_BYTES)
            paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
            candidates = (_keep(" ".join(line.strip() for line in p.splitlines())) for p in paragraphs)
        else:
            candidates = (_keep(_row_text(path, number, row)) for number, row in _jsonl_rows(path, root))
    return list(_take((t for t in candidates if t is not None), limit))


def _row_text(path: Path, number: int, row: dict[str, Any]) -> str:
    value = row.get("text")
    if not isinstance(value, str):
        raise SpecError(path, "missing" if "text" not in row else f"expected a string, got {type(value).__name__}", line=number, field="text")
    return value
