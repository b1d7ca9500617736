"""Pydantic models of the YAML specs (DESIGN §2). Every key has a default except `name`,
`variants` and `traits`; unknown keys are errors (``extra="forbid"``)."""

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- model variants
class ModelSpec(Strict):
    """A model variant: weights (hub id or local path), how to load them, optional LoRA."""

    name: str = Field("", description="Variant name; defaults to the file name or the experiment's key.")
    model: str = Field(..., description="HF hub id or a path relative to the project root.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$",
        description="auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps. Ignored with `device_map: auto`.")
    device_map: Literal["auto"] | None = Field(
        None, description="auto: spread the model over the GPUs of this machine (transformers' device_map='auto'; "
                          "without a GPU everything is placed on cpu). `device` is then ignored.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="Load the linear layers in 8 or 4 bit with bitsandbytes (CUDA or CPU).")
    lora: str | None = Field(None, description="PEFT adapter: local path or hub id.")
    chat_template: Literal["auto", True, False] = Field(
        "auto", description="Use the tokenizer's chat template (auto: when it has one); base models: false."
    )
    trust_remote_code: bool = False
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keywords for the chat template, e.g. {enable_thinking: true}. Templates with a thinking "
                    "switch (Qwen3 style) render with thinking off unless this turns it on.")


# --------------------------------------------------------------------------- judge
class JudgeSpec(Strict):
    model: str = Field("keywords", description="`keywords`, `local:<variant>` or a litellm model string.")
    api_base: str | None = None
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="Wait before the first retry; each further retry doubles it.")
    max_failure_rate: float = Field(
        0.2, ge=0, le=1, description="Fail the step when more than this share of a batch's requests fail (after retries).")
    deadline_s: float = Field(
        900.0, gt=0, description="Total time for one batch of judge requests, retries included; past it the step fails.")


Method = Literal["mean_diff", "probe", "gradient", "pca", "random_baseline"]


# --------------------------------------------------------------------------- traits
class Keywords(Strict):
    """Word lists for the `keywords` judge: the trait's two poles."""

    positive: list[str] = Field(default_factory=list)
    negative: list[str] = Field(default_factory=list)


class TraitConfig(Strict):
    """Optional `trait.yaml` inside a trait folder: overrides for that trait."""

    description: str | None = Field(None, description="The judge's rubric when the folder has no definition.txt.")
    direction: Literal["positive", "negative"] | None = Field(None, description="Overrides steering.json's direction.")
    paired: Literal["auto", True, False] = Field(
        "auto", description="Positive and negative scenarios pair by line (auto: jsonl pairs, txt does not)."
    )
    judge: str | None = Field(
        None, description="One of the experiment's `judges`, by name. A trait folder is third-party data: it may pick "
                          "among judges the experiment allows, never set an endpoint or a connection setting.")
    position: str | list[str] | None = Field(None, description="This trait's extraction.position.")
    methods: list[Method] | None = Field(None, description="This trait's extraction.methods.")
    layers: str | int | None = Field(None, description="This trait's extraction.layers and steering.layers.")
    keywords: Keywords | None = None

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_by_name(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("a trait folder may not set judge settings (they could choose an endpoint); "
                             "name one of the experiment's `judges` instead, e.g. `judge: strict`")
        return value


# --------------------------------------------------------------------------- experiment sections
Component = Literal["residual", "attn_out", "mlp_out", "attn_contribution", "mlp_contribution"]
# Methods a stage can *use*: every extraction method plus the CMA-ES refinement of a steered vector.
UsableMethod = Literal["mean_diff", "probe", "gradient", "pca", "random_baseline", "cma_es"]


class VettingSpec(Strict):
    enabled: bool = False
    pos_threshold: float = Field(60, ge=0, le=100, description="Positive replies pass at a score >= this.")
    neg_threshold: float = Field(40, ge=0, le=100, description="Negative replies pass at a score <= this.")
    min_per_side: int = Field(10, ge=1, description="Fewer passing on either side fails the trait's check.")
    paired_filter: bool = Field(False, description="Drop both halves of a pair when either fails.")
    adaptive_position: bool = Field(
        False, description="The judge estimates how many leading tokens carry the trait; the median sets response[:N]."
    )


class ExtractionSpec(Strict):
    variant: str | None = Field(None, description="Variant to extract from (default: the first variant).")
    position: str | list[str] = Field("response[:5]", description="Position DSL, one or a list.")
    component: Component = "residual"
    methods: list[Method] = Field(default_factory=lambda: ["probe", "mean_diff"], min_length=1)
    layers: str | int = "all"
    val_split: float = Field(0.2, ge=0.0, lt=1.0)
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    clean_massive_dims: bool = Field(False, description="Zero the massive-activation dimensions before any method.")
    min_val_accuracy: float = Field(0.7, ge=0, le=1, description="Asset check: the best vector's held-out accuracy.")
    vetting: VettingSpec = VettingSpec()

    @property
    def positions(self) -> list[str]:
        return [self.position] if isinstance(self.position, str) else list(self.position)


class LensSpec(Strict):
    top_k: int = Field(20, ge=1, le=200)
    filter_common: bool = Field(True, description="Leave out tokens that rank high for almost any direction.")


class SearchSpec(Strict):
    steps: int = Field(5, ge=1, description="Evaluations per layer at most.")
    questions: int = Field(5, ge=1, description="Steering questions per evaluation (from steering.json).")
    max_new_tokens: int = Field(32, ge=1)
    coherence_target: float = Field(80, ge=0, le=100, description="Multiply the coefficient up while coherence holds this.")
    min_coherence: float = Field(77, ge=0, le=100, description="A run is valid at this coherence or above.")
    start: float = Field(0.5, gt=0, description="First coefficient, as a multiple of the layer's mean activation norm.")
    up: float = Field(1.6, gt=1)
    down: float = Field(0.6, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)


class CmaSpec(Strict):
    enabled: bool = Field(False, description="Refine the best steering vector with CMA-ES (the `cma_es` method).")
    generations: int = Field(4, ge=1)
    subspace_dim: int = Field(8, ge=0, description="Dimensions of the random subspace the direction moves in.")
    sigma0: float = Field(0.15, gt=0)
    popsize: int | None = Field(None, ge=2)
    seed: int = 0


class SteeringSpec(Strict):
    variants: list[str] = Field(default_factory=list, description="Variants to steer (default: the extraction variant).")
    layers: str | int = "30%-60%"
    position: str | None = Field(None, description="Vectors to steer with (default: the first extraction position).")
    method: Method | None = Field(
        None, description="Vector method (default: the best at that position). Not cma_es: that refines steering's own result.")
    min_delta: float = Field(10, ge=0, description="Asset check: the best vector moves the trait at least this much.")
    system_prompt: str | None = Field(
        None, description="An adversarial system prompt for baseline and steered answers (e.g. the opposite pole).")
    strip_prefix: bool = Field(
        False, description="Steer on the bare question: remove steering.json's adversarial_prefix from each question.")
    coefficients: list[float] | None = Field(
        None, min_length=1,
        description="A fixed grid of coefficients (multiples of the layer's mean activation norm, like search.start) "
                    "evaluated at every layer instead of the adaptive search.")
    vectors_from: str | None = Field(
        None, description="Steer with another experiment's vectors (extract once, apply everywhere).")
    search: SearchSpec = SearchSpec()
    cma_es: CmaSpec = CmaSpec()


class SamplingSpec(Strict):
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0


class InferenceSpec(Strict):
    variants: list[str] = Field(default_factory=list, description="Default: every variant.")
    sample: SamplingSpec | None = Field(None, description="Sample instead of greedy decoding.")
    replay: dict[str, str] = Field(
        default_factory=dict, description="variant -> the variant whose exact token ids it replays (prefill, no generation).")
    import_responses: dict[str, str] = Field(
        default_factory=dict, alias="import",
        description="variant -> a JSON file of externally produced responses ([{id, response}] or {items: [...]}).")
    prompt_sets: list[str] = Field(default_factory=list)
    layers: str | int = Field("best", description="Layer DSL plus best, best+N, best-N.")
    position: str | None = Field(None, description="Which extracted vectors to monitor (default: the first position).")
    score: Literal["raw", "cosine", "normalized"] = Field(
        "raw", description="raw h·v̂, cosine h·v̂/‖h‖, or normalized h·v̂ / the layer's mean ‖h‖ (from calibration).")
    centre: bool = Field(False, description="Subtract the vector's class-midpoint baseline first.")
    clean_massive_dims: bool = Field(False, description="Leave out the calibration's massive dims before projecting.")
    method: UsableMethod | None = Field(None, description="Vector method to monitor (default: the best at that position).")
    response_only: bool = Field(False, description="Store projections of response tokens only (not the prompt's).")
    vectors_from: str | None = Field(
        None, description="Monitor with another experiment's vectors (extract once, apply everywhere).")
    save_activations: bool = Field(
        False, description="Store every response token's residual activations (float16; large) in the "
                           "`inference_activations` asset, so projections for new traits run without the model.")
    save_layers: str | int = Field(
        "all", description="Layer DSL (no `best`): the layers save_activations stores. Projections read them only "
                           "when they cover every layer a trait is monitored at.")
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(16, ge=1)


class ComparisonSpec(Strict):
    a: str
    b: str
    prompt_set: str
    top_pct: float = Field(5, gt=0, le=100, description="Share of each prompt's clauses (percent) kept for the ranking.")


# The benchmarks traitflow.capability knows (its BENCHMARKS; tests/test_capability.py checks they agree).
BenchmarkName = Literal["hellaswag", "arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1", "ce_loss"]


class SteerCondition(Strict):
    steer: str = Field(description="Trait whose best vector steers: coef × unit vector at every position.")
    coef: float | Literal["best", "-best"] = Field(
        description="Coefficient in activation units (as best_vector.coefficient and `traitflow monitor --steer`); "
                    "best: best_vector's own, -best: its opposite.")
    layer: int | None = Field(None, ge=0, description="Steer at this layer instead of the trait's best layer.")

    @field_validator("coef")
    @classmethod
    def _finite(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("coef must be a finite number, best or -best")
        return value


class AblateCondition(Strict):
    ablate: str = Field(description="Trait whose best direction is projected out of the residual at every layer and token.")


class BenchmarkSpec(Strict):
    name: BenchmarkName = Field(
        description="The benchmark: multiple choice (accuracy) or ce_loss (next-token loss on neutral text).")
    limit: int = Field(200, ge=1, description="The first N items (ce_loss: paragraphs).")
    source: str = Field("hf", description="hf (Hugging Face datasets, when reachable) or a JSONL (ce_loss: also .txt) "
                                          "in the dataset's schema, relative to the project root.")
    conditions: list[Literal["baseline"] | SteerCondition | AblateCondition] = Field(
        default_factory=lambda: ["baseline"], min_length=1,
        description="baseline, {steer: TRAIT, coef: C|best|-best, layer?}, {ablate: TRAIT}.")
    variants: list[str] = Field(default_factory=list, description="Variants scored (default: steering.variants).")
    chat_template: bool = Field(False, description="Ask through the variant's chat template: the question is the user's "
                                                   "message, each choice a reply (default: plain text, as the harness does).")

    @field_validator("conditions", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        """One message per bad condition (a union's errors would list every alternative)."""
        from pydantic import ValidationError

        if not isinstance(value, list):
            return value
        out = []
        for i, condition in enumerate(value):
            kind = SteerCondition if isinstance(condition, dict) and "steer" in condition else \
                AblateCondition if isinstance(condition, dict) and "ablate" in condition else None
            if condition == "baseline":
                out.append(condition)
            elif kind is None:
                raise ValueError(f"condition {i + 1}: expected baseline, {{steer: TRAIT, coef: C}} or {{ablate: TRAIT}}, "
                                 f"got {condition!r}")
            else:
                try:
                    out.append(kind.model_validate(condition))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = str(first["loc"][0]) if first["loc"] else "?"
                    message = (f"must be a finite number, best or -best, got {condition.get('coef')!r}"
                               if where == "coef" and first["type"] != "extra_forbidden" else first["msg"])
                    raise ValueError(f"condition {i + 1}: {where}: {message}") from None
        return out


class StorageSpec(Strict):
    uri: str = Field("./experiments", description="Local folder (relative to the root) or s3://bucket/prefix.")
    endpoint_url: str | None = Field(None, description="S3 API endpoint (R2: https://<account>.r2.cloudflarestorage.com); "
                                                       "default: AWS_ENDPOINT_URL, else AWS.")
    region: str | None = Field(None, description="S3 region (R2: auto); default: AWS_REGION / AWS_DEFAULT_REGION.")
    checksums: Literal["when_supported", "when_required"] = Field(
        "when_supported", description="when_required: only the checksums the S3 API requires (for S3 APIs that reject "
                                      "boto3's default CRC checksums, e.g. older R2).")


class AutomationSpec(Strict):
    on_change: Literal["mark_stale", "materialize"] = Field(
        "mark_stale", description="mark_stale: edits show as stale and wait for you; materialize: the automation sensor "
                                  "re-runs the edited trait's or prompt set's chain (GPU work starts by itself).")
    schedule: str | None = Field(None, description="Cron string: on this schedule, re-run what is missing or stale.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from dagster._utils.schedules import is_valid_cron_string  # only when a schedule is set: importing it costs 1 s

            if not is_valid_cron_string(value):
                raise ValueError(f"{value!r} is not a cron string (five fields, e.g. '0 3 * * *' for 03:00 daily)")
        return value


EXPERIMENT_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"  # it becomes a Dagster key prefix and group name


class ExperimentSpec(Strict):
    name: str = Field(..., pattern=EXPERIMENT_NAME_PATTERN, description="Letters, digits and _ (a Dagster group name).")
    variants: dict[str, str | ModelSpec] = Field(..., min_length=1)
    traits: list[str] = Field(..., min_length=1, description="Globs over datasets/traits, e.g. toy/*.")
    judge: JudgeSpec = JudgeSpec()
    judges: dict[str, JudgeSpec] = Field(
        default_factory=dict, description="Other judges, by name, that a trait may choose in its trait.yaml (`judge: <name>`).")
    extraction: ExtractionSpec = ExtractionSpec()
    logit_lens: LensSpec = LensSpec()
    steering: SteeringSpec = SteeringSpec()
    inference: InferenceSpec = InferenceSpec()
    comparisons: list[ComparisonSpec] = Field(default_factory=list)
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    storage: StorageSpec = StorageSpec()
    automation: AutomationSpec = AutomationSpec()

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict) -> dict:
        import re

        for key in value:
            if not re.match(NAME_PATTERN, key):
                raise ValueError(f"variant name {key!r} must match {NAME_PATTERN}")
        return value


# --------------------------------------------------------------------------- prompt sets
class PromptItem(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: int | str
    text: str = Field(..., min_length=1)
    system_prompt: str | None = None


class PromptSetFile(BaseModel):
    """trait-interp's `inference/<set>.json`: {name, description, prompts: [{id, text}]}."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str | None = None
    description: str | None = None
    system_prompt: str | None = None
    prompts: list[PromptItem] = Field(..., min_length=1)
