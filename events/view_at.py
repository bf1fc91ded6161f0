"""The routing view a recorded decision was made on, for replaying one request's decisions (the admin API's
request story) without folding the log from its start each time.

A decision at seq D was made on a view built from the configuration recorded last before D (an older log
without any: `new_view`), folded up to the decision's `view_seq`. That view is rebuilt from the closest
start that fits: a view this cache holds at or before `view_seq` under the same configuration, or the
newest snapshot at or before it made under that configuration (events/snapshot.py), else nothing (a fold
from the log's start); then the log up to `view_seq`, reading only the types the view folds.

The cache keeps the states (`RoutingView.state()`, immutable) of the last few views built, so opening
several requests near each other folds only the events between them. Safe to share between threads: one
view is built at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from events.config_applied import CONFIG_TAG, view_of
from events.snapshot import newest_fitting
from events.store import LogStore
from events.types import ConfigApplied
from events.view import RoutingView, ViewState, rebuild

KEPT = 8  # views' states kept: a few requests' worth, a few hundred KB each on a large catalog
# The most events a view is folded over from its start: about what the snapshots a gateway keeps span (3
# of them, every 100k events), a second or two of reading. Older decisions are left to `switchboard
# replay`, which folds the log once for all of them.
MAX_FOLD = 300_000


class ViewsAt:
    def __init__(
        self, new_view: Callable[[], RoutingView], kept: int = KEPT, max_fold: int = MAX_FOLD
    ) -> None:
        self._new_view = new_view
        self._kept = kept
        self.max_fold = max_fold
        self._states: OrderedDict[tuple[str | None, int], ViewState] = OrderedDict()
        self._lock = threading.Lock()
        self.folded = 0  # events folded by every build so far (what the cache and snapshots save)

    def view_for(self, store: LogStore, decision_seq: int, view_seq: int) -> RoutingView | None:
        """A fresh view as the decision recorded at `decision_seq` saw it (at `view_seq`); None when it
        would take folding more than `max_fold` events (no cached view or snapshot close enough)."""
        with self._lock:
            found = store.last_of(CONFIG_TAG, before=decision_seq)
            config = found[1] if found is not None and isinstance(found[1], ConfigApplied) else None
            config_hash = config.hash if config is not None else None
            view = view_of(config) if config is not None else self._new_view()
            start = self._closest(config_hash, view_seq)
            if config_hash is not None:
                snapshot, _ = newest_fitting(store.snapshots(), config_hash, view_seq)
                if snapshot is not None and (start is None or snapshot.seq > start.seq):
                    start = snapshot.view
            if view_seq - (start.seq if start is not None else 0) > self.max_fold:
                return None
            if start is not None:
                view.restore(start)
            if view.seq < view_seq:
                self.folded += rebuild(store, view, upto=view_seq, types=RoutingView.FOLDED_TAGS)
            self._keep((config_hash, view_seq), view.state())
            return view

    def _closest(self, config_hash: str | None, view_seq: int) -> ViewState | None:
        best: tuple[str | None, int] | None = None
        for key in self._states:
            if key[0] == config_hash and key[1] <= view_seq and (best is None or key[1] > best[1]):
                best = key
        if best is None:
            return None
        self._states.move_to_end(best)
        return self._states[best]

    def _keep(self, key: tuple[str | None, int], state: ViewState) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self._kept:
            self._states.popitem(last=False)
