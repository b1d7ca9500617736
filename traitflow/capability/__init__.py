"""Capability benchmarks: what steering and ablation cost a model.

- :mod:`traitflow.capability.items`: multiple-choice items (HellaSwag, ARC, MMLU, TruthfulQA MC1)
  and neutral texts (WikiText) from the Hugging Face hub or local files in the hub's schema.
- :mod:`traitflow.capability.score`: length-normalised log-likelihood scoring with the context's
  KV cache shared between its choices, cross-entropy and KL on neutral text, under intervention
  configurations; bootstrap intervals, paired for a condition's difference from the baseline.

Import-light: torch, numpy and datasets are imported inside the functions.
"""

from traitflow.capability.items import BENCHMARKS, ChoiceItem, load_items, load_texts
from traitflow.capability.score import batch_bytes, bootstrap_ci, paired_delta, score_ce, score_choices, summarize

__all__ = ["BENCHMARKS", "ChoiceItem", "batch_bytes", "bootstrap_ci", "load_items", "load_texts", "paired_delta", "score_ce", "score_choices", "summarize"]
