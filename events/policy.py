"""Every routing constant in one place. The defaults start from the seed system's formulas; each one can
be changed under `[routing]` in the config (and `switchboard replay --config` shows what a change would do).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class RoutingPolicy:
    # Thompson sampling on recency-decayed counts: theta ~ Beta(s + prior_successes, f + prior_failures).
    decay_days: float = 7.0
    prior_successes: float = 2.0
    prior_failures: float = 2.0
    # Speed term: speed_weight * tps / max_tps, minus slow_penalty * (1 - tps / slow_tps) below slow_tps.
    speed_weight: float = 0.3
    slow_tps: float = 10.0
    slow_penalty: float = 0.35
    # TTFB term: +ttfb_bonus under ttfb_good_ms, falling to 0 at ttfb_zero_ms, to ttfb_worst at ttfb_bad_ms.
    ttfb_bonus: float = 0.25
    ttfb_good_ms: float = 500.0
    ttfb_zero_ms: float = 2000.0
    ttfb_bad_ms: float = 10000.0
    ttfb_worst: float = -0.5
    # Intelligence: intelligence_weight * normalised rank (1 = the smartest in the catalog).
    intelligence_weight: float = 0.1
    # auto-smart: theta + smart_intelligence * I + smart_speed * speed + smart_ttfb * ttfb.
    smart_intelligence: float = 0.6
    smart_speed: float = 0.2
    smart_ttfb: float = 0.2
    # 429 penalty points: +penalty_per_429 once every key of the model is cooling, capped, decaying by one
    # point every penalty_decay_s and by one per success; each point subtracts penalty_weight.
    penalty_per_429: float = 3.0
    penalty_cap: float = 10.0
    penalty_decay_s: float = 120.0
    penalty_weight: float = 0.05
    # Quotas: a request reserves its estimated input plus min(max_tokens or default, cap) output tokens.
    output_reserve_default: int = 1000
    output_reserve_cap: int = 2000
    # Cooldowns.
    rate_limit_cooldown_s: float = 60.0  # a 429 without Retry-After or reset headers
    transient_cooldown_s: float = 15.0  # a model whose every usable key failed with 5xx/connect/stall
    transient_window_s: float = 60.0  # ... within this window
    model_missing_cooldown_s: float = 3600.0  # a 404 for the model on that platform
    key_forbidden_cooldown_s: float = 3600.0  # a 403 for a key that works: that key x model

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
