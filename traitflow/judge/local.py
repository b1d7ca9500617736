"""``local:<variant>``: a model variant of the experiment acting as the judge.

The variant runs in this process through litellm's custom-provider hook: a provider named
``traitflow-local`` is registered in ``litellm.custom_provider_map``, and its completion
formats the prompt with the variant's chat template (:func:`traitflow.model.chat.prompt_ids`),
runs one forward pass and returns the next token's top-20 log-probabilities in the OpenAI
response shape. Everything after that — caching, concurrency, retries, the probability-weighted
score and the mass threshold — is the same code path as for a remote judge
(:class:`~traitflow.judge.llm.LiteLLMJudge`).

The model is loaded (through ``load_variant``, normally the process's model cache) only when a
call misses the cache, so a fully cached re-score loads nothing. Forward passes of one model
are serialised by a lock and run off the event loop.

A small model's first reply token is often not a number; such replies have little mass on
integers and score ``None``, and the mass is reported so the None rate shows why. So unlike a
remote judge, a local batch in which no reply held a number is not an error: it is what the
experiment's own variant answers. Failures (a forward pass that raises, impossible
log-probabilities) and ``deadline_s`` work as for a remote judge; the endpoint is the process
itself (``endpoint`` is ``""``). A tokenizer that splits numbers into single digits ("7", "0")
can only express 0-9 in one token.

Example:
    >>> judge = LocalJudge(JudgeSpec(model="local:chat"), cache, "chat", lambda v: MODEL_CACHE.get(specs[v], root))
"""

import asyncio
import itertools
import threading
from collections.abc import Callable
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.judge.base import Completion
from traitflow.judge.cache import JudgeCache
from traitflow.judge.llm import TOP_LOGPROBS, LiteLLMJudge, completion_from_response, import_litellm
from traitflow.specs.models import JudgeSpec

__all__ = ["PROVIDER", "LocalJudge", "next_token_top_logprobs", "register_provider"]

PROVIDER = "traitflow-local"

# litellm model name (after "traitflow-local/") -> the loaded model and the lock for its forward passes
_REGISTRY: dict[str, tuple[Any, threading.Lock]] = {}
_REGISTRY_LOCK = threading.Lock()
_COUNTER = itertools.count(1)
_HANDLER: list[Any] = []


def next_token_top_logprobs(
    loaded: Any, prompt: str, k: int = TOP_LOGPROBS, system_prompt: str | None = None
) -> list[tuple[str, float]]:
    """``(token text, logprob)`` of the ``k`` most likely next tokens after ``prompt`` (chat-formatted)."""
    import torch

    from traitflow.model.chat import prompt_ids
    from traitflow.model.hooks import model_lock

    ids = prompt_ids(loaded, prompt, system_prompt=system_prompt)
    # Hooks live on the shared model: another thread's capture or steering must not see this pass.
    with model_lock(loaded.model), torch.inference_mode():
        input_ids = torch.tensor([ids], device=loaded.device)
        logits = loaded.model(input_ids=input_ids).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, k=min(k, logprobs.shape[-1]))
    tokenizer = loaded.tokenizer
    return [(tokenizer.decode([int(i)]), float(lp)) for lp, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]


def _model_response(model_response: Any, top: list[tuple[str, float]]) -> Any:
    from litellm.types.utils import ChatCompletionTokenLogprob, ChoiceLogprobs, TopLogprob

    alternatives = [TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8"))) for t, lp in top]
    first = top[0] if top else ("", 0.0)
    choice = model_response.choices[0]
    choice.message.content = first[0]
    choice.finish_reason = "length"
    choice.logprobs = ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token=first[0], logprob=first[1], bytes=list(first[0].encode("utf-8")), top_logprobs=alternatives
            )
        ]
    )
    return model_response


def _make_handler() -> Any:
    from litellm import CustomLLM

    class LocalProvider(CustomLLM):
        """litellm custom provider: ``traitflow-local/<name>`` -> a registered in-process model."""

        def completion(
            self, model: str, messages: list, model_response: Any = None, optional_params: dict | None = None, **kwargs: Any
        ) -> Any:
            name = model.split("/", 1)[1] if model.startswith(PROVIDER + "/") else model
            with _REGISTRY_LOCK:
                entry = _REGISTRY.get(name)
            if entry is None:
                raise RuntimeError(f"no local judge model registered as {name!r}")
            loaded, lock = entry
            system = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system") or None
            user = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") != "system")
            k = int((optional_params or {}).get("top_logprobs") or TOP_LOGPROBS)
            with lock:
                top = next_token_top_logprobs(loaded, user, k=k, system_prompt=system)
            return _model_response(model_response, top)

        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(self.completion, *args, **kwargs)

    return LocalProvider()


def register_provider() -> None:
    """Register the ``traitflow-local`` provider with litellm (once per process)."""
    litellm = import_litellm()
    with _REGISTRY_LOCK:
        if not _HANDLER:
            _HANDLER.append(_make_handler())
        handler = _HANDLER[0]
        if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
            litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": PROVIDER, "custom_handler": handler}]


class LocalJudge(LiteLLMJudge):
    """A judge that is a model variant of the experiment (``judge: {model: local:<variant>}``).

    Args:
        spec: the judge spec (``api_base`` is ignored; ``timeout_s`` does not cut a forward pass).
        cache: the reply cache (keyed by ``local:<variant>``), or None.
        variant: the variant's name in the experiment.
        load_variant: ``variant -> LoadedModel``; called on the first cache miss.
    """

    def __init__(self, spec: JudgeSpec, cache: JudgeCache | None, variant: str, load_variant: Callable[[str], Any]):
        self.variant = variant
        self._load_variant = load_variant
        self._name = f"{variant}@{next(_COUNTER)}"  # unique per judge: two experiments may share a variant name
        self._loaded: Any = None
        self._load_lock = threading.Lock()
        super().__init__(spec, cache, model=f"local:{variant}", litellm_model=f"{PROVIDER}/{self._name}")
        self.endpoint, self._where, self._secrets = "", "", []  # in-process: no endpoint, nothing secret

    numberless_batch_fails = False  # a small variant answering no number is a judgement (see the module docstring)

    def check(self) -> None:
        if self._checked:
            return
        register_provider()
        self._checked = True

    def _ensure_loaded(self) -> None:
        with self._load_lock:
            if self._loaded is not None:
                return
            loaded = self._load_variant(self.variant)
            if loaded is None:
                raise TraitflowError(f"judge local:{self.variant}: no such model variant")
            self._loaded = loaded
            with _REGISTRY_LOCK:
                _REGISTRY[self._name] = (loaded, threading.Lock())

    def close(self) -> None:
        with _REGISTRY_LOCK:
            _REGISTRY.pop(self._name, None)
        self._loaded = None
        super().close()

    async def _complete(self, prompt: str) -> Completion:
        if self._loaded is None:
            await asyncio.to_thread(self._ensure_loaded)  # a TraitflowError here stops the batch
        litellm = import_litellm()
        response = await litellm.acompletion(
            model=self.litellm_model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=1,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
            num_retries=0,
            drop_params=True,
        )
        return completion_from_response(response)
