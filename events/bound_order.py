"""A mode's chain in order of each model's best possible score, kept sorted from one decision to the next.

`decide` visits models from the best possible score down and stops once no model left could win
(events/decide.py). Sorting every model for every decision was most of a decision's cost; this order is built
once and then only the models whose score parts changed since (their own successes) are moved.

Keys are loose: each is an upper bound of the exact bound `decide` uses (it leaves out the 429 penalty, and
normalises the speed term by the fastest speed rounded down to a 5% grid, so the fastest model getting a
little faster does not reorder everything). `decide` tightens each key to the exact one as it takes models
off this order, so the visit order, and with it every decision, is exactly that of sorting by exact bounds.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Sequence

from events.catalog import CatalogModel

# (group: 0 for the mode's preferred pool, else 1; -1 - upper bound of the score but theta; chain position)
Key = tuple[int, float, int]

SPEED_GRID = 1.05


def grid_floor(fastest: float, base: float) -> float:
    """The largest `base * SPEED_GRID**k` (k >= 0) not above `fastest` (itself at least `base`)."""
    k = max(0, math.floor(math.log(fastest / base) / math.log(SPEED_GRID)))
    floor = base * SPEED_GRID**k
    while floor > fastest and k > 0:  # the float log may land one step high
        k -= 1
        floor = base * SPEED_GRID**k
    return floor


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
