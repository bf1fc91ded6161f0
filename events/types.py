"""The event vocabulary: every fact the gateway records, as one msgspec tagged union.

Facts are past tense. They carry key ids and labels, never key material, gateway tokens or prompts.
Schema evolution: new fields get defaults; a field's type never changes; a tag is never reused.
"""

from __future__ import annotations

import typing
from enum import StrEnum
from typing import Any, Literal

import msgspec

# Failure kinds (events/taxonomy.py): `AttemptFailed.kind` is a plain `str`, not a Literal, so a log with a
# kind this build does not know still decodes.


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every event: when it happened (wall seconds) and, for request events, which request.

    `gc=False` (inherited): events hold only strings, numbers and tuples of other untracked structs, so they
    can never be part of a reference cycle; untracked, a replay holding 100,000 of them does not make every
    collection walk them (measured: reading the log took 2.5x as long with them tracked)."""

    ts: float
    request_id: str | None = None


class ServiceStarted(Event, tag="service_started", frozen=True):
    """The gateway started and rebuilt its projections from `events_replayed` events."""

    version: str
    events_replayed: int = 0
    # The run before this one ended without `service_stopped` (killed or crashed): when it had started,
    # and what it left open (events/unclean.py).
    unclean_previous_start: float | None = None
    unfinished_requests: int = 0
    unfinished_attempts: int = 0


class ServiceStopped(Event, tag="service_stopped", frozen=True):
    """The gateway shut down gracefully after flushing the log."""

    reason: str = "signal"


# The client protocol a request came in by: chat completions, Responses, Anthropic Messages, embeddings.
Protocol = Literal["chat", "responses", "messages", "embeddings"]
PROTOCOLS: tuple[Protocol, ...] = ("chat", "responses", "messages", "embeddings")


class RequestReceived(Event, tag="request_received", frozen=True):
    """A client asked for a completion; `model` is what it asked for (a virtual or concrete model)."""

    model: str
    stream: bool
    messages: int
    est_input_tokens: int
    requested_models: tuple[str, ...] = ()
    protocol: Protocol = "chat"  # the client protocol it came in by


class AttemptStarted(Event, tag="attempt_started", frozen=True):
    """One upstream call began, on one model with one key, holding `reserved_tokens` of its quotas."""

    attempt: int
    platform: str
    model: str
    key_id: str
    reserved_tokens: int = 0
    session: str | None = None  # the conversation's session key, for single-flight platforms


class AttemptSucceeded(Event, tag="attempt_succeeded", frozen=True):
    """An upstream call answered in full. Times in milliseconds; tokens from usage or estimated."""

    attempt: int
    platform: str
    model: str
    key_id: str
    latency_ms: float
    ttfb_ms: float
    input_tokens: int
    output_tokens: int
    streamed: bool = False
    exhausted_for_s: float | None = None  # x-ratelimit-remaining said 0: the key is spent for this long


class AttemptFailed(Event, tag="attempt_failed", frozen=True):
    """An upstream call failed; `kind` follows the error taxonomy, `message` is short and secret-free."""

    attempt: int
    platform: str
    model: str
    key_id: str
    kind: str
    status: int | None = None
    message: str = ""
    retry_after_s: float | None = None
    latency_ms: float = 0.0
    mid_stream: bool = False


class StreamStalled(Event, tag="stream_stalled", frozen=True):
    """An upstream went silent: before its first byte (`pre`) or after content began (`mid`)."""

    platform: str
    model: str
    key_id: str
    phase: Literal["pre", "mid"]
    silent_s: float


class ClientDisconnected(Event, tag="client_disconnected", frozen=True):
    """The client went away; the attempt in flight was cancelled. Not a model failure."""

    platform: str | None = None
    model: str | None = None
    content_forwarded: bool = False


class RequestCompleted(Event, tag="request_completed", frozen=True):
    """The request ended: `outcome` ok, error or client_abort, after `attempts` upstream calls."""

    outcome: Literal["ok", "error", "client_abort"]
    status: int
    attempts: int
    latency_ms: float
    platform: str | None = None
    model: str | None = None
    error: str | None = None
    # A stream's first content sent to its client, from the request's start (None: not a stream, or no
    # content went out while it ran): the time to first token the client saw, fallbacks before it included.
    first_content_ms: float | None = None


KeySource = Literal["config", "env", "vault"]


class KeyAdded(Event, tag="key_added", frozen=True):
    """A provider key became known. `source` is config, env or vault (encrypted in the data dir)."""

    key_id: str
    platform: str
    label: str
    source: KeySource


class KeyRemoved(Event, tag="key_removed", frozen=True):
    """A key the log knew is no longer configured (config, environment or vault) at start."""

    key_id: str
    reason: str = "no longer configured"


class KeyDisabled(Event, tag="key_disabled", frozen=True):
    """An operator took a key out of rotation."""

    key_id: str
    reason: str = ""


class KeyEnabled(Event, tag="key_enabled", frozen=True):
    """An operator (or a passing health check) put a key back into rotation."""

    key_id: str


class KeyInvalidated(Event, tag="key_invalidated", frozen=True):
    """The provider rejected a key (401/403). Persisted: it stays invalid across restarts."""

    key_id: str
    status: int
    message: str = ""


class KeyChecked(Event, tag="key_checked", frozen=True):
    """A health check called the provider with a key: `ok` (2xx), else the status it got (None: no answer)."""

    key_id: str
    ok: bool
    status: int | None = None
    message: str = ""


class CooldownsReset(Event, tag="cooldowns_reset", frozen=True):
    """An operator lifted a key's cooldowns: every model's (`model` None), or one model's, and then that
    model's own cooldown on the key's platform too."""

    key_id: str
    model: str | None = None  # the model id (as on the key's platform)


class ScoredCandidate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One model a decision could take, with the parts of its score."""

    ref: str
    score: float
    theta: float
    speed: float
    ttfb: float
    intelligence: float
    penalty: float
    pool: str
    named: bool = False  # named by the request: keeps its place ahead of the chain


class ExclusionCode(StrEnum):
    """Why a candidate was left out, for code to read (`Excluded.reason` is for people)."""

    POOL = "pool"  # the mode's pool leaves the model out
    SKIPPED = "skipped"  # this request skips the model (it failed here, or thread protection)
    PLATFORM_SKIPPED = "platform_skipped"  # this request skips the platform
    CONTEXT = "context"  # the context window is too small
    COOLING = "cooling"  # the model is cooling down
    BANNED = "banned"  # thread protection banned the platform for the session
    PROVIDER_BAN_WINDOW = "provider_ban_window"  # the session just used another model of the platform
    SINGLE_FLIGHT = "single_flight"  # the platform is busy with another session
    KEY_UNUSABLE = "key_unusable"  # the key is invalid or disabled
    RATE_LIMITED = "rate_limited"  # the key is cooling for this model after a 429 (or a spent quota)
    FORBIDDEN = "forbidden"  # the provider forbade this key this model (a 403 for a key that works)
    TRIED = "tried"  # this request already tried the key for this model
    QUOTA = "quota"  # the key is over one of the model's limits


class Excluded(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A model (or one key of it) a decision left out, and why (`code`: "" in logs older than codes)."""

    ref: str
    reason: str
    until: float | None = None
    code: str = ""


class RouteInput(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Everything about the request that `decide` reads, so a replay can call it again."""

    mode: str
    requested: tuple[str, ...] = ()
    use_chain: bool = True
    est_tokens: int = 0
    reserve_tokens: int = 0
    tried: tuple[tuple[str, str], ...] = ()  # (key_id, model ref) already tried by this request
    skip_models: tuple[tuple[str, str], ...] = ()  # (model ref, why) left out for this request
    skip_platforms: tuple[tuple[str, str], ...] = ()  # (platform, why)
    min_context: int | None = None  # after a context error: only larger windows
    session: str | None = None  # the conversation's session key, if any
    use_pin: bool = False  # pins apply: auto-smart, or the client sent X-Session-Id
    task: str = "chat"  # the model task it needs: chat, or embedding (only models of that task are named)


class RouteDecided(Event, tag="route_decided", frozen=True):
    """Why an attempt went where it went: the seed and view position to replay it, the scored candidates
    (best first, at most the first few), the exclusions (models without any key only counted, models the
    mode's pool leaves out only named: they share one reason), the choice."""

    attempt: int
    seed: int
    view_seq: int
    now: float
    input: RouteInput
    candidates: tuple[ScoredCandidate, ...]
    excluded: tuple[Excluded, ...]
    chosen_ref: str | None
    chosen_key: str | None
    candidates_total: int = 0
    no_key_models: int = 0
    pin_used: bool = False
    pin_cleared: str | None = None
    pool_excluded: tuple[str, ...] = ()  # refs left out by the mode's pool (events.view.POOL_REASON)
    not_admitted: str | None = None  # the choice was not tried: why (a single-flight platform was busy)


class SessionPinned(Event, tag="session_pinned", frozen=True):
    """A successful turn pinned the conversation to a model and key (also: the session was used now)."""

    session: str
    platform: str
    model: str
    key_id: str


class SessionPinCleared(Event, tag="session_pin_cleared", frozen=True):
    """The session's pin was dropped (its model cooling, its key unusable, its platform banned, ...)."""

    session: str
    reason: str


class SessionBanned(Event, tag="session_banned", frozen=True):
    """Thread protection banned a platform for this session (provider-ban)."""

    session: str
    platform: str
    reason: str


class SessionBanLifted(Event, tag="session_ban_lifted", frozen=True):
    """An operator lifted a platform's ban for this session."""

    session: str
    platform: str


class LimitChanges(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The limits a `ModelUpdated` changes: a value sets it, null lifts it, a missing field keeps it."""

    rpm: int | msgspec.UnsetType | None = msgspec.UNSET
    rpd: int | msgspec.UnsetType | None = msgspec.UNSET
    tpm: int | msgspec.UnsetType | None = msgspec.UNSET
    tpd: int | msgspec.UnsetType | None = msgspec.UNSET

    def given(self) -> tuple[tuple[str, int | None], ...]:
        """(limit, value) for every limit this changes, None lifting it."""
        return tuple(
            (name, value)
            for name in self.__struct_fields__
            if not isinstance(value := getattr(self, name), msgspec.UnsetType)
        )


class ModelUpdated(Event, tag="model_updated", frozen=True):
    """An operator changed a model's catalog entry. Unset fields keep their current value."""

    platform: str
    model: str
    enabled: bool | None = None
    fallback: bool | None = None
    pool: str | None = None
    intelligence_rank: int | None = None
    limits: LimitChanges | None = None


class ConfigApplied(Event, tag="config_applied", frozen=True):
    """The configuration routing decisions depend on, in force from here to the next `config_applied`: the
    catalog's models (limits included), the routing and session policies, the platforms and which count
    their daily quota over the last 24 h, the timeouts and the attempt budget. Plain values, as
    events/config_applied.py writes and reads them (so a field added to a policy needs no new schema); never
    a secret: no keys, tokens or headers. Appended at start when `hash` (of all but `ts`) differs from the
    last one in the log, so `switchboard replay` and the read-only commands need no config file."""

    hash: str
    models: tuple[dict[str, Any], ...] = ()
    policy: dict[str, Any] = msgspec.field(default_factory=dict)
    sessions: dict[str, Any] = msgspec.field(default_factory=dict)
    platforms: tuple[str, ...] = ()
    rolling_day_platforms: tuple[str, ...] = ()
    timeouts: dict[str, Any] = msgspec.field(default_factory=dict)
    max_attempts: int = 0


class ResponseStored(Event, tag="response_stored", frozen=True):
    """A Responses API answer kept for `previous_response_id` and `GET /v1/responses/{id}` (the client
    did not send `store: false`). `messages`: what this turn added to the conversation in the neutral chat
    form (its input messages, then the assistant's message), as a JSON array; `response`: the Response
    object as the client got it, as JSON. Not carried: the turn's `instructions` (OpenAI does not carry
    them over either). The message bodies are the point of storing, so they are here in full: a client
    that wants none of its prompts in the log sends `store: false`."""

    response_id: str
    previous_response_id: str | None = None
    messages: str = "[]"
    response: str = "{}"


def without_conversation(event: Event) -> Event:
    """The event as the operators' views show it (the live feed, a request's story): a stored Responses
    turn without its conversation's text, which only the log keeps (for continuing it); any other as is."""
    if isinstance(event, ResponseStored):
        return msgspec.structs.replace(event, messages="[]", response="{}")
    return event


class ResponseDeleted(Event, tag="response_deleted", frozen=True):
    """A client deleted a stored response (`DELETE /v1/responses/{id}`): it is no longer found."""

    response_id: str


AnyEvent = (
    ServiceStarted
    | ServiceStopped
    | RequestReceived
    | AttemptStarted
    | AttemptSucceeded
    | AttemptFailed
    | StreamStalled
    | ClientDisconnected
    | RequestCompleted
    | KeyAdded
    | KeyRemoved
    | KeyDisabled
    | KeyEnabled
    | KeyInvalidated
    | KeyChecked
    | ModelUpdated
    | RouteDecided
    | SessionPinned
    | SessionPinCleared
    | SessionBanned
    | ConfigApplied
    | CooldownsReset
    | SessionBanLifted
    | ResponseStored
    | ResponseDeleted
)

EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(AnyEvent)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    """JSON with the `type` tag, as stored in the log and sent on the admin feed."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> AnyEvent:
    event: AnyEvent = _decoder.decode(data)
    return event


def event_tag(cls: type[Event]) -> str:
    return cls.__struct_config__.tag  # type: ignore[return-value]  # every event class has a str tag


def event_type(event: Event) -> str:
    return event_tag(type(event))
