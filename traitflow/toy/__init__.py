"""The toy world: a tiny Llama chat model trained here, whose traits are known.

Three traits with two poles each (optimism: optimistic/pessimistic, formality: formal/casual,
refusal: refuses/complies), word lists in :mod:`traitflow.toy.vocab`, a deterministic corpus in
:mod:`traitflow.toy.corpus`, training in :mod:`traitflow.toy.train`, trait folders and a prompt
set in :mod:`traitflow.toy.datasets`. ``python -m traitflow.toy data|train|verify`` drives them.
Committed outputs: ``datasets/models/toy-chat``, ``datasets/models/toy-pessimist-lora``,
``datasets/traits/toy/*`` and ``datasets/inference/toy/general.json``.

Nothing here imports torch at import time.
"""
