"""Settings for the property tests on the parsers that read outside bytes.

Two profiles, chosen by HYPOTHESIS_PROFILE: `fuzz-quick` (the default: few examples, so the whole suite
stays fast) and `fuzz` (many examples, for `scripts/fuzz`; FUZZ_EXAMPLES sets how many). Each test here
applies `FUZZ_PROFILE` itself rather than loading a profile globally, so the other hypothesis tests of the
suite keep their own settings when everything runs together.

No example database: a failure prints its falsifying example (and a reproduce blob), and nothing is
written into the checkout.
"""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# fuzz_strategies.py (the strategies and checks the modules here share) sits beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))

FUZZ_PROFILE = "switchboard-fuzz"
_QUICK_EXAMPLES = 40
_COMMON = {
    "deadline": None,  # two cores shared with other work: a slow example is not a bug
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _examples() -> int:
    value = os.environ.get("FUZZ_EXAMPLES", "").strip()
    if not value:
        return 2000
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"FUZZ_EXAMPLES must be a positive integer, got {value[:20]!r}")
    return int(value)


settings.register_profile("fuzz-quick", max_examples=_QUICK_EXAMPLES, **_COMMON)
if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz":
    settings.register_profile("fuzz", max_examples=_examples(), **_COMMON)
    settings.register_profile(FUZZ_PROFILE, parent=settings.get_profile("fuzz"))
else:
    settings.register_profile(FUZZ_PROFILE, parent=settings.get_profile("fuzz-quick"))
