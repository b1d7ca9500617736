"""Load a model variant (a :class:`~traitflow.specs.models.ModelSpec`) once per process.

``spec.model`` is a path relative to the project root when that exists (an absolute path is
accepted too), else a hub id. dtype ``auto`` is bfloat16 on a CUDA device that supports it,
else float32; device ``auto`` is cuda, else mps, else cpu. ``device_map: auto`` hands placement
to transformers/accelerate (``device_map="auto"``: the blocks spread over this machine's GPUs,
everything on cpu without one) and ignores ``device``; inputs then go to the embedding's device.
``quantization`` (8bit/4bit) uses bitsandbytes through transformers' ``BitsAndBytesConfig``, on
CUDA or CPU (bitsandbytes ships a CPU backend; 4-bit computes in the resolved dtype, 8-bit casts
inputs to float16). ``lora`` is a PEFT adapter applied with ``PeftModel.from_pretrained`` (on a
quantized base too). Tokenizers pad on the left; a missing pad token falls back to eos.

torch, transformers and peft are imported inside functions: Dagster imports this module in
many processes and must not pay for them.

Example:
    >>> loaded = MODEL_CACHE.get(ModelSpec(model="datasets/models/toy-chat"), root)
    >>> loaded.n_layers, loaded.hidden_size
"""

import dataclasses
import gc
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.specs.models import ModelSpec

__all__ = ["MODEL_CACHE", "LoadedModel", "ModelCache", "clear", "load_model", "resolve_device", "resolve_dtype"]


@dataclass
class LoadedModel:
    """A loaded model variant and what code downstream needs to know about it."""

    model: Any  # torch.nn.Module (a transformers *ForCausalLM, possibly wrapped by peft.PeftModel)
    tokenizer: Any
    spec: ModelSpec
    device: Any  # torch.device of the inputs (the embedding's device)
    dtype: Any  # torch.dtype
    n_layers: int
    hidden_size: int
    uses_chat_template: bool
    source: str  # resolved local path or hub id
    revision: str | None

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return 0 if pad is None else int(pad)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every token id that ends a response: the generation config's eos ids and the tokenizer's."""
        ids: list[int] = []
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(eos, int):
            ids.append(eos)
        elif eos is not None:
            ids.extend(int(e) for e in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return sorted(set(ids))


# --------------------------------------------------------------------------- resolution helpers
def resolve_device(device: str) -> Any:
    """``auto`` -> cuda, else mps, else cpu; an explicit device must exist."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TraitflowError(f"device {device!r} requested but CUDA is not available on this machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise TraitflowError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise TraitflowError("device 'mps' requested but MPS is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``auto`` -> bfloat16 on a CUDA device that supports it, else float32."""
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _looks_like_path(text: str) -> bool:
    """True when ``text`` cannot be a hub id (``name`` or ``org/name``) and so must be a path."""
    if text.startswith((".", "/", "~")) or "\\" in text:
        return True
    return text.count("/") > 1


def _resolve_source(ref: str, root: Path, what: str) -> tuple[str, bool]:
    """(source, is_local): a local path under root / absolute path, else a hub id."""
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute():
        candidate = Path(root) / candidate
    if candidate.exists():
        return str(candidate.resolve()), True
    if _looks_like_path(ref):
        raise TraitflowError(f"{what} path not found: {candidate}")
    return ref, False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class _DropCastNotice:
    """Logging filter: bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on
    every forward of every 8-bit layer whose input is not float16 (always, in float32/bfloat16)."""

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_CAST_NOTICE = _DropCastNotice()


def _quantization_config(spec: ModelSpec, dtype: Any) -> Any:
    """transformers' BitsAndBytesConfig for ``spec.quantization`` (None for ``none``)."""
    if spec.quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TraitflowError(
            f"model {spec.model!r}: quantization {spec.quantization!r} needs the bitsandbytes package (pip install bitsandbytes)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a broken native library shows as anything
        raise TraitflowError(f"model {spec.model!r}: bitsandbytes does not load here: {_first_line(exc)}") from None
    import logging

    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        cast_logger = logging.getLogger("bitsandbytes.autograd._functions")
        if _CAST_NOTICE not in cast_logger.filters:
            cast_logger.addFilter(_CAST_NOTICE)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")


def _device_map(spec: ModelSpec, device: Any, quantized: bool) -> Any:
    """``from_pretrained``'s device_map: ``auto`` when asked; a quantized model is placed whole on
    its device at load (bitsandbytes layers cannot be moved with ``.to`` afterwards); else None."""
    if spec.device_map == "auto":
        return "auto"
    if quantized:
        if device.type == "cuda":
            return {"": device.index if device.index is not None else 0}
        return {"": str(device)}
    return None


# --------------------------------------------------------------------------- loading
def load_model(spec: ModelSpec, root: Path) -> LoadedModel:
    """Load the model, tokenizer and optional LoRA adapter described by ``spec``.

    Args:
        spec: the model variant.
        root: the project root; relative local paths in ``spec.model``/``spec.lora`` resolve here.

    Raises:
        TraitflowError naming the path or id when it cannot be found or loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.environ.get("TRAITFLOW_QUIET_LOADING"):  # `traitflow run` prints its own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    from traitflow.model.arch import decoder_layers, embedding

    root = Path(root)
    source, is_local = _resolve_source(spec.model, root, "model")
    # device_map: auto ignores `device`; the best device here only picks the `auto` dtype.
    device = resolve_device("auto" if spec.device_map == "auto" else spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    quant = _quantization_config(spec, dtype)
    device_map = _device_map(spec, device, quant is not None)

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    if spec.revision is not None and not is_local:
        kwargs["revision"] = spec.revision
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device_map is not None:
        kwargs["device_map"] = device_map
    where = f"model {spec.model!r}" + ("" if is_local else " (hub id; no local path at that location)")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        setup = [f"quantization {spec.quantization}"] if quant is not None else []
        setup += ["device_map auto"] if spec.device_map == "auto" else [f"on {device}"] if setup else []
        suffix = f" ({', '.join(setup)})" if setup else ""
        raise TraitflowError(f"cannot load {where}{suffix}: {_first_line(exc)}") from None
    if device_map is None:
        model = model.to(device)

    tok_kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "padding_side": "left"}
    if spec.revision is not None and not is_local:
        tok_kwargs["revision"] = spec.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        raise TraitflowError(f"cannot load the tokenizer of {where}: {_first_line(exc)}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token

    if spec.lora:
        lora_source, _ = _resolve_source(spec.lora, root, "LoRA adapter")
        try:
            from peft import PeftModel
        except ImportError:
            raise TraitflowError(f"LoRA adapter {spec.lora!r} needs the peft package (pip install peft)") from None
        try:
            model = PeftModel.from_pretrained(model, lora_source)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise TraitflowError(f"cannot load LoRA adapter {spec.lora!r}: {_first_line(exc)}") from None
        if device_map is None:
            model = model.to(device)

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    has_template = bool(getattr(tokenizer, "chat_template", None))
    if spec.chat_template is True and not has_template:
        raise TraitflowError(f"model {spec.model!r}: chat_template is true but its tokenizer has no chat template")
    uses_chat = spec.chat_template if isinstance(spec.chat_template, bool) else has_template

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if hidden is None:
        hidden = embedding(model).weight.shape[-1]
    input_device = embedding(model).weight.device
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        device=torch.device(input_device),
        dtype=dtype,
        n_layers=len(decoder_layers(model)),
        hidden_size=int(hidden),
        uses_chat_template=bool(uses_chat),
        source=source,
        revision=spec.revision,
    )


# --------------------------------------------------------------------------- process cache
class ModelCache:
    """Loads each model variant once per process.

    Keyed by every spec field except ``name`` (two variant names for the same weights share
    one model) and the resolved root. The returned LoadedModel carries the caller's spec.
    ``loads`` counts actual loads.
    """

    def __init__(self) -> None:
        self._models: dict[tuple, LoadedModel] = {}
        self._lock = threading.Lock()
        self.loads = 0

    @staticmethod
    def key(spec: ModelSpec, root: Path) -> tuple:
        fields = spec.model_dump(exclude={"name"})
        return (tuple(sorted((k, repr(v)) for k, v in fields.items())), str(Path(root).resolve()))

    def get(self, spec: ModelSpec, root: Path) -> LoadedModel:
        key = self.key(spec, root)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = load_model(spec, root)
                self._models[key] = loaded
                self.loads += 1
        if loaded.spec != spec:
            loaded = dataclasses.replace(loaded, spec=spec)
        return loaded

    def __contains__(self, item: tuple[ModelSpec, Path]) -> bool:
        spec, root = item
        return self.key(spec, root) in self._models

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        """Drop every cached model and free accelerator memory."""
        with self._lock:
            had = bool(self._models)
            self._models.clear()
        if had:
            gc.collect()
            try:
                import sys

                torch = sys.modules.get("torch")
                if torch is not None and torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - best effort
                pass


MODEL_CACHE = ModelCache()


def clear() -> None:
    """Clear the process-level :data:`MODEL_CACHE`."""
    MODEL_CACHE.clear()
