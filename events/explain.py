"""Why a recorded decision went where it went, in words: the text `switchboard replay --explain` prints and
the admin API shows beside each decision of a request (service/admin_requests.py)."""

from __future__ import annotations

from events.replay import Replayed
from events.view import POOL_REASON, split_pool


def explain(r: Replayed, replayed: bool = True) -> str:
    """`r` in words; `replayed` False: the record alone, its decision not made again (`r` holds none)."""
    rec = r.recorded
    d = r.decision
    verdict = ("reproduced" if r.matches else "DIFFERS") if replayed else "not replayed"
    lines = [
        f"{rec.request_id} attempt {rec.attempt} at seq {r.seq} (view {rec.view_seq}, mode {rec.input.mode},"
        f" seed {rec.seed}): chose {rec.chosen_ref or 'nothing'}"
        + (f" with key {rec.chosen_key}" if rec.chosen_key else "")
        + f" [{verdict}]"
    ]
    if rec.input.tried:
        lines.append("  already tried: " + ", ".join(f"{ref} ({key})" for key, ref in rec.input.tried))
    candidates = d.candidates if d is not None else rec.candidates
    if candidates:
        lines.append(
            "  candidates (score = theta + speed + ttfb + intelligence - penalty; smart mode weights"
            " intelligence):"
        )
        for i, c in enumerate(candidates, 1):
            mark = "  <- chosen" if c.ref == rec.chosen_ref else ""
            lines.append(
                f"    {i}. {c.ref:<48} {c.score:7.3f}  theta {c.theta:.3f}  speed {c.speed:+.3f}  "
                f"ttfb {c.ttfb:+.3f}  intel {c.intelligence:.2f}  penalty {c.penalty:.2f}"
                f"  [{c.pool}{', named' if c.named else ''}]{mark}"
            )
        total = d.candidates_total if d is not None else rec.candidates_total
        if total > len(candidates):
            lines.append(
                f"    ... {total - len(candidates)} more eligible models could not have scored higher"
            )
    if d is not None:
        pool, excluded = split_pool(d.excluded)
    else:  # older records list pool exclusions one by one
        pool, excluded = split_pool(rec.excluded)
        pool = [*rec.pool_excluded, *pool]
    if excluded or pool:
        lines.append("  not chosen because:")
        lines.extend(f"    {e.ref}: {e.reason}" for e in excluded)
    if pool:
        lines.append(f"    {POOL_REASON}: {', '.join(pool)}")
    no_key = d.no_key_models if d is not None else rec.no_key_models
    if no_key:
        lines.append(f"  {no_key} models skipped: their platforms have no key")
    if not r.matches and d is not None:
        lines.append(
            f"  replay chose {d.chosen_ref or 'nothing'}"
            + (f" with key {d.chosen_key}" if d.chosen_key else "")
        )
    return "\n".join(lines)
