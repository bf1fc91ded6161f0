"""A mode's chain in order of each model's best possible score, kept sorted from one decision to the next.

`decide` visits models from the best possible score down and stops once no model left could win
(events/decide.py). Sorting every model for every decision was most of a decision's cost; this order is built
once and then only the models whose score parts changed since (their own successes) are moved.

Keys are loose: each is an upper bound of the exact bound `decide` uses (it leaves out the 429 penalty, and
normalises the speed term by the fastest speed rounded to a 5% grid, so the fastest model getting a little
faster does not reorder everything; with negative weights, which the config allows, the bounds widen the
other way). `decide` tightens each key to the exact one as it takes models off this order, so the visit
order, and with it every decision, is exactly that of sorting by exact bounds.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Sequence
from functools import lru_cache

from events.catalog import CatalogModel

# (group: 0 for the mode's preferred pool, else 1; -1 - upper bound of the score but theta; chain position)
Key = tuple[int, float, int]

SPEED_GRID = 1.05


@lru_cache(maxsize=64)  # every decision asks, and the fastest speed changes far less often than that
def speed_grid(fastest: float, base: float) -> tuple[float, float]:
    """Consecutive points `base * SPEED_GRID**k` (k >= 0) around `fastest` (itself at least `base`):
    (floor, ceiling) with floor <= fastest < ceiling."""
    k = max(0, math.floor(math.log(fastest / base) / math.log(SPEED_GRID)))
    while k > 0 and base * SPEED_GRID**k > fastest:  # the float log may land a step off either way
        k -= 1
    while base * SPEED_GRID ** (k + 1) <= fastest:
        k += 1
    return base * SPEED_GRID**k, base * SPEED_GRID ** (k + 1)


class BoundOrder:
    def __init__(self, models: Sequence[CatalogModel], keys: list[Key]) -> None:
        self.keys = keys  # by chain position
        self.sorted = sorted(keys)
        self._position = {m.ref: i for i, m in enumerate(models)}
        self.stale: set[int] = set()  # positions whose score parts changed since their key was computed

    def touch(self, ref: str) -> None:
        pos = self._position.get(ref)
        if pos is not None:
            self.stale.add(pos)

    def update(self, pos: int, key: Key) -> None:
        old = self.keys[pos]
        if key != old:
            del self.sorted[bisect_left(self.sorted, old)]
            insort(self.sorted, key)
            self.keys[pos] = key
