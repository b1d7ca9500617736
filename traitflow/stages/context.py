"""What a stage gets (StageContext), what read-only tools get (ReadContext), and what a stage returns (StageOutput)."""

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitflow.artifacts import Artifacts
from traitflow.errors import TraitflowError
from traitflow.specs.loader import Experiment, Project
from traitflow.store import ArtifactStore, experiment_store


@dataclass(frozen=True)
class Markdown:
    """A metadata value to show as markdown (charts embed their PNG this way)."""

    text: str


# Characters that mean something inline in (GitHub-flavoured) markdown: `|` splits a table cell,
# `*`/`_`/`~` emphasise, `[`/`]`/`!` make links and images, a backtick opens code. A backslash
# makes each literal (CommonMark escapes any ASCII punctuation).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~!#$])")
SAMPLE_CHARS = 200  # a sample text is cut here: metadata is for a glance, the viewer has the rest


def md_text(value: Any, limit: int = SAMPLE_CHARS) -> str:
    """`value` as literal text inside one markdown table cell: cut to `limit` characters, a line
    break shown as ↵ (a raw newline would end the table row), `<`, `>` and `&` as entities (model
    output such as ``<script>`` must show as text, never reach the page as HTML), and markdown's
    inline syntax escaped (``|`` would split the cell, ``*`` start emphasis)."""
    text = "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
    text = re.sub(r"\r\n|\r|\n", " ↵ ", text)
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def markdown_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> "Markdown":
    """A short titled markdown table of sample texts; every cell goes through :func:`md_text`."""
    lines = [f"**{md_text(title)}**", "", "| " + " | ".join(md_text(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


TABLE_TYPES = ("string", "int", "float", "bool")  # Dagster's TableColumn types that traitflow uses


@dataclass(frozen=True)
class Table:
    """A metadata table, without Dagster (traitflow/ does not import it): typed columns and rows of
    plain values. assets/common.py turns it into a `MetadataValue.table`.

    A cell may be None (an undefined metric, a trait not steered yet): `records()` keeps it None,
    and makes NaN and infinity None too. Dagster (1.13) takes None in a TableRecord but wants
    every record to have the same fields, so a cell is never left out; the UI parses each record
    as JSON, where a NaN would fail the row, and shows null as an empty cell."""

    columns: dict[str, str]  # name -> one of TABLE_TYPES, in display order
    rows: list[dict[str, Any]]

    def __post_init__(self) -> None:
        bad = {name: kind for name, kind in self.columns.items() if kind not in TABLE_TYPES}
        if bad:
            raise ValueError(f"table column types must be one of {TABLE_TYPES}, got {bad}")
        for row in self.rows:
            unknown = set(row) - set(self.columns)
            if unknown:
                raise ValueError(f"table row has cells for no column: {sorted(unknown)}")

    def records(self) -> list[dict[str, str | int | float | bool | None]]:
        """Each row with every column, its cells converted to the column's type; undefined: None."""
        convert = {"string": str, "int": int, "float": float, "bool": bool}
        out = []
        for row in self.rows:
            record: dict[str, str | int | float | bool | None] = {}
            for name, kind in self.columns.items():
                value = row.get(name)
                undefined = value is None or (isinstance(value, float) and not math.isfinite(value))
                record[name] = None if undefined else convert[kind](value)
            out.append(record)
        return out


@dataclass(frozen=True)
class Check:
    """The outcome of one quality gate for one partition (an asset check in Dagster)."""

    passed: bool
    detail: str


@dataclass
class StageOutput:
    """What one stage run on one partition returns.

    `metadata()` is the partition's Dagster metadata, flat and with the keys the asset pages have
    always shown: `path`, then `files` (e.g. `chart_html`, `results_log`), then `numbers`, then
    `tables` (e.g. `scores`, `runs`), then `chart`, then `samples` (a few of the texts the stage
    produced or judged, as a markdown table).
    `checks` are the partition's asset check outcomes (check name -> Check)."""

    path: Path  # the artifact written
    numbers: dict[str, Any] = field(default_factory=dict)  # headline numbers (str, int, float)
    files: dict[str, Path] = field(default_factory=dict)  # other files worth a link: chart_html, results_log
    chart: Markdown | None = None
    checks: dict[str, Check] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)  # name -> a table for the asset page
    samples: Markdown | None = None  # a few sample texts (replies, answers, clauses), escaped

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), **{k: str(v) for k, v in self.files.items()}, **self.numbers,
                               **self.tables}
        if self.chart is not None:
            out["chart"] = self.chart
        if self.samples is not None:
            out["samples"] = self.samples
        return out

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON (what a model server sends back): see :meth:`from_json`."""
        return {"path": str(self.path), "numbers": self.numbers, "files": {k: str(v) for k, v in self.files.items()},
                "chart": self.chart.text if self.chart is not None else None,
                "checks": {name: {"passed": c.passed, "detail": c.detail} for name, c in self.checks.items()},
                "tables": {name: {"columns": t.columns, "rows": t.records()} for name, t in self.tables.items()},  # no NaN
                "samples": self.samples.text if self.samples is not None else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StageOutput":
        return cls(path=Path(data["path"]), numbers=dict(data["numbers"]), files={k: Path(v) for k, v in data["files"].items()},
                   chart=Markdown(data["chart"]) if data.get("chart") is not None else None,
                   checks={name: Check(bool(c["passed"]), str(c["detail"])) for name, c in data["checks"].items()},
                   tables={name: Table(dict(t["columns"]), list(t["rows"])) for name, t in data.get("tables", {}).items()},
                   samples=Markdown(data["samples"]) if data.get("samples") is not None else None)


@dataclass
class ReadContext:
    """One experiment's specs and stored artifacts, read-only: what report, export and monitor use,
    and what a stage gets for another experiment's vectors (`vectors_from`). It loads no model."""

    project: Project
    experiment: Experiment
    store: ArtifactStore
    storage_override: str | None = None  # TRAITFLOW_STORAGE / --storage: replaces every experiment's storage.uri

    @classmethod
    def create(cls, project: Project, experiment: str, storage_uri: str | None = None) -> "ReadContext":
        exp = project.require(experiment)
        return cls(project, exp, experiment_store(exp.spec.storage, project.root, storage_uri), storage_uri or None)

    @property
    def artifacts(self) -> Artifacts:
        return Artifacts(self.store, self.experiment.name)

    def for_experiment(self, other: Experiment) -> "ReadContext":
        """The same project and storage override, another experiment (its own storage.uri)."""
        store = experiment_store(other.spec.storage, self.project.root, self.storage_override)
        return ReadContext(self.project, other, store, self.storage_override)


def _no_model(variant: str) -> Any:
    raise TraitflowError(f"variant {variant}: this context reads stored artifacts only; no model is loaded here")


@dataclass(kw_only=True)
class StageContext(ReadContext):
    """What every stage needs: the project, one experiment, its store and a model loader."""

    load_model: Callable[[str], Any] = _no_model  # variant name -> LoadedModel (cached per process)
    log: Callable[[str], None] = print
    # Traits whose blocking check failed upstream (vetting left too few replies), with why: their
    # stored vectors, if any, are from before and are not used. Set from Dagster's check results.
    blocked_traits: dict[str, str] = field(default_factory=dict)
    # The model server that runs this stage's model work (traitflow.server), when one is up.
    server: Any = None

    @classmethod
    def create(cls, project: Project, experiment: str, load_model: Callable[[str], Any] | None = None,  # type: ignore[override]
               storage_uri: str | None = None, log: Callable[[str], None] = print) -> "StageContext":
        exp = project.require(experiment)
        store = experiment_store(exp.spec.storage, project.root, storage_uri)
        if load_model is None:
            from traitflow.model.loading import MODEL_CACHE

            def load_model(variant: str) -> Any:
                return MODEL_CACHE.get(exp.variants[variant], project.root)

        return cls(project, exp, store, storage_uri or None, load_model=load_model, log=log)
