"""Wall time derived from trio's clock, so a MockClock (autojump) moves the wall time events carry too."""

from __future__ import annotations

import time

import trio


class WallClock:
    """`now()` in wall seconds; fixed to the real wall clock once, at construction, inside trio."""

    def __init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        return self._offset + trio.current_time()
