"""What a compaction of the log may remove: the records no projection folds and replay does not need.

Folding the compacted log gives exactly the projections the full log gives (every folded event stays, at
its seq), and each decision left replays as before (its view is rebuilt from folded events only). What goes
is the bulk of the bytes: per-request records (received, disconnected) and decision records, which only
explain and replay the past before the cutoff. `request_completed` stays: the analytics (events/analytics.py)
fold it, and it is small. Listed, not derived, so an event type added later
is kept until someone decides otherwise; tests/events/test_compaction.py checks that none of these is
folded by any projection.
"""

from __future__ import annotations

from events.types import (
    ClientDisconnected,
    RequestReceived,
    ResponseDeleted,
    ResponseStored,
    RouteDecided,
    event_tag,
)

# Stored Responses API answers (actors/responses.py) are read back only within `[responses]
# retention_days`: older ones are expired, and a compaction drops them. A cutoff inside the retention
# forgets the responses before it too (their `previous_response_id` is then not found, as for an expired
# one). A deletion always comes after what it deletes, so a cutoff never keeps a deleted response without
# its deletion.
RESPONSES: frozenset[str] = frozenset(event_tag(t) for t in (ResponseStored, ResponseDeleted))

REMOVABLE: frozenset[str] = (
    frozenset(event_tag(t) for t in (RequestReceived, RouteDecided, ClientDisconnected)) | RESPONSES
)
