"""Steering: interventions on the residual stream and steered generation.

- :mod:`traitflow.steer.interventions`: :class:`Steer`, :class:`Ablate`, :class:`Cap`,
  configurations, and the :func:`intervene` context manager (per-row configurations in one
  batch, prefill and KV-cache decode steps, hooks always removed).
- :mod:`traitflow.steer.generate`: :func:`steered_generate`, K configurations in one batched
  greedy ``generate`` call.

Import-light: torch is imported inside functions.
"""

from traitflow.steer.generate import steered_generate
from traitflow.steer.interventions import (
    POSITION_SETS,
    Ablate,
    Cap,
    Config,
    Intervention,
    Steer,
    StepState,
    intervene,
)

__all__ = [
    "POSITION_SETS",
    "Ablate",
    "Cap",
    "Config",
    "Intervention",
    "StepState",
    "Steer",
    "intervene",
    "steered_generate",
]
