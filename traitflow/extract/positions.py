"""The position language (DESIGN §4): which tokens of a prompt+response sequence to pool.

A position is ``frame[slice]`` or ``frame[index]`` with ``frame`` one of ``prompt``,
``response`` or ``all``. Slices follow Python semantics and are clamped to the frame; an
index selects one token. Positions always index the token ids actually generated.

Example:
    >>> p = parse_position("response[:5]")
    >>> p.window(prompt_len=10, response_len=3)   # response occupies [10, 13)
    (10, 13)
    >>> parse_position("prompt[-1]").window(10, 3)
    (9, 10)
    >>> parse_position("response[:5]").slug
    'response_0_5'

This module must not import torch: specs are validated with it before any model loads.
"""

import re
from dataclasses import dataclass

from traitflow.errors import TraitflowError

FRAMES = ("prompt", "response", "all")

_INT = r"[+-]?\d+"
_PATTERN = re.compile(
    rf"^(?P<frame>[A-Za-z_]+)\s*\[\s*(?:"
    rf"(?P<index>{_INT})"
    rf"|(?P<start>{_INT})?\s*:\s*(?P<stop>{_INT})?"
    rf")\s*\]$"
)

__all__ = ["FRAMES", "Position", "parse_position"]


@dataclass(frozen=True)
class Position:
    """A parsed position: a frame and either a slice (``start``/``stop``) or one ``index``."""

    frame: str
    start: int | None
    stop: int | None
    index: int | None
    text: str

    def window(self, prompt_len: int, response_len: int) -> tuple[int, int]:
        """The ``[start, stop)`` token range in the unpadded sequence ``prompt + response``.

        The prompt occupies ``[0, prompt_len)`` and the response
        ``[prompt_len, prompt_len + response_len)``. An index outside the frame or a slice
        that selects nothing gives an empty window (``start == stop``); callers decide
        whether that is an error.
        """
        if prompt_len < 0 or response_len < 0:
            raise ValueError(f"negative lengths: prompt_len={prompt_len}, response_len={response_len}")
        if self.frame == "prompt":
            offset, n = 0, prompt_len
        elif self.frame == "response":
            offset, n = prompt_len, response_len
        else:
            offset, n = 0, prompt_len + response_len
        if self.index is not None:
            i = self.index + n if self.index < 0 else self.index
            if 0 <= i < n:
                return offset + i, offset + i + 1
            return offset, offset
        start, stop, _ = slice(self.start, self.stop).indices(n)
        if stop <= start:
            return offset + start, offset + start
        return offset + start, offset + stop

    def can_hold_a_token(self, max_response_len: int) -> bool:
        """Whether some prompt (of any length) and some response of 1 to `max_response_len` tokens
        (the generation budget) give this position a non-empty window. `response[:0]`,
        `prompt[3:1]` or `response[20]` with 16 new tokens never do: validation catches them."""
        # Past the largest bound written in the position, a longer prompt changes nothing.
        longest = max((abs(v) for v in (self.start, self.stop, self.index) if v is not None), default=0) + 2
        for response_len in range(1, max_response_len + 1):
            for prompt_len in (range(1, longest + 1) if self.frame != "response" else (1,)):
                start, stop = self.window(prompt_len, response_len)
                if stop > start:
                    return True
        return False

    @property
    def slug(self) -> str:
        """A filesystem-safe name: ``response[:5]`` -> ``response_0_5``, ``prompt[-1]`` ->
        ``prompt_-1``, ``response[-5:]`` -> ``response_-5_end``, ``all[:]`` -> ``all_0_end``."""
        if self.index is not None:
            return f"{self.frame}_{self.index}"
        start = 0 if self.start is None else self.start
        stop = "end" if self.stop is None else str(self.stop)
        return f"{self.frame}_{start}_{stop}"

    def __str__(self) -> str:
        return self.text


def parse_position(text: str) -> Position:
    """Parse ``frame[slice]`` / ``frame[index]``; a TraitflowError (one line) on bad syntax."""
    if not isinstance(text, str):
        raise TraitflowError(f"position must be a string like 'response[:5]', got {text!r}")
    stripped = text.strip()
    m = _PATTERN.match(stripped)
    if m is None:
        hint = ""
        if stripped.count(":") >= 2:
            hint = " (steps are not supported)"
        raise TraitflowError(
            f"bad position {text!r}{hint}: expected frame[slice] or frame[index] with frame one of "
            f"{', '.join(FRAMES)}, e.g. 'response[:5]', 'prompt[-1]', 'all[:]'"
        )
    frame = m.group("frame")
    if frame not in FRAMES:
        raise TraitflowError(f"bad position {text!r}: unknown frame {frame!r}, expected one of {', '.join(FRAMES)}")
    if m.group("index") is not None:
        return Position(frame=frame, start=None, stop=None, index=int(m.group("index")), text=stripped)
    start = m.group("start")
    stop = m.group("stop")
    return Position(
        frame=frame,
        start=None if start is None else int(start),
        stop=None if stop is None else int(stop),
        index=None,
        text=stripped,
    )
