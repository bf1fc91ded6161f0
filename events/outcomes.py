"""What one upstream attempt came to, as a tagged union: answered, failed with a kind, stalled before or
after content, or abandoned because the client went away. The request core learns from these; the
request runner records them (`AttemptSucceeded` / `AttemptFailed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from events.failures import FailureKind


@dataclass
class Usage:
    """Token counts of one attempt: the provider's when it reports them, else estimated from the text."""

    input_tokens: int = 0  # 0: not reported (the request's estimate stands in)
    output_reported: int = 0
    output_chars: int = 0

    @property
    def output_tokens(self) -> int:
        return self.output_reported or (self.output_chars + 3) // 4

    def take(self, usage: object) -> None:
        """The provider's `usage`, when its values are counts (anything else would poison the log)."""
        if not isinstance(usage, dict):
            return
        prompt, completion = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
        if prompt:
            self.input_tokens = prompt
        if completion:
            self.output_reported = completion


# More tokens than any request could hold: a provider's number past this is no count. Unbounded, one such
# number summed into the quotas made every later snapshot unencodable (msgpack holds 64 bits), at every
# restart, since the event stays in the log.
MAX_TOKENS = 10**9


def count(value: object) -> int | None:
    """`value` if it is a token count (an int from 0 to MAX_TOKENS, not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


@dataclass(frozen=True, slots=True)
class Answered:
    """A whole answer. `body` is the completion (neutral form) when it was not streamed."""

    usage: Usage
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A failure of a kind (events/failures.py). `after_content`: the client already has content, so there
    is no silent fallover; `delivered`: it even has a whole answer (a truncated stream); `body`: a truncated
    whole answer, better than nothing if every other attempt fails."""

    kind: FailureKind
    message: str
    status: int | None = None
    retry_after_s: float | None = None
    after_content: bool = False
    delivered: bool = False
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Stalled:
    """The upstream went silent: before its first byte or content (`pre`) or after content began (`mid`)."""

    phase: Literal["pre", "mid"]
    message: str
    silent_s: float

    @property
    def kind(self) -> FailureKind:
        return FailureKind.STALL_PRE if self.phase == "pre" else FailureKind.STALL_MID

    @property
    def after_content(self) -> bool:
        return self.phase == "mid"

    status = None
    retry_after_s = None
    delivered = False
    body = None


@dataclass(frozen=True, slots=True)
class ClientGone:
    """The client went away while the attempt ran: not the model's fault."""

    after_content: bool = False


Outcome = Answered | Failed | Stalled | ClientGone
Failing = Failed | Stalled  # what the request core learns from
