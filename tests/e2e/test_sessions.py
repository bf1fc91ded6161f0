"""Conversations that stay put, end to end (DESIGN.md section 6): pins in auto-smart (and with
X-Session-Id), derived session keys, thread protection (provider-ban / model-skip), single-flight
platforms, restarts, `switchboard replay` and `switchboard sessions`.

Every platform points at the same fault-injecting upstream with its own key, so the upstream's recorded
requests say which platform served an attempt (by API key) and which model (by id; ids are unique across
platforms here). Time-dependent tests use the MockClock-with-autojump pattern of test_streams.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fault_upstream
import httpx
import msgspec
import openai
import pytest
import trio
import trio.testing
from custom_gateway import gateway_from, platform_toml, read_log, server_toml, settled
from fault_upstream import UpstreamState
from harness import GATEWAY_KEY

from events.types import RouteDecided, SessionBanned, SessionPinCleared, SessionPinned
from service import cli

pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Async generator '(openai\._streaming|httpx2|httpcore2)\.:ResourceWarning"
    ),
    pytest.mark.usefixtures("clean_env"),
]

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
CHAT = "/v1/chat/completions"


# ---- config -----------------------------------------------------------------------------------------------


def platform(name: str, url: str, *, protection: str = "model-skip", single_flight: bool = False) -> str:
    text = platform_toml(name, url, (f"{name}-key",)) + f'protection = "{protection}"\n'
    return text + ("single_flight = true\n" if single_flight else "")


def model_toml(platform: str, model_id: str, rank: int, **fields: object) -> str:
    # Not custom_gateway.model_toml: its `!r` applies to the whole conditional, so booleans become 'false'.
    text = f'\n[[models]]\nplatform = "{platform}"\nid = "{model_id}"\nintelligence_rank = {rank}\n'
    for name, value in fields.items():
        text += f"{name} = {msgspec.json.encode(value).decode()}\n"
    return text


def config(platforms: list[tuple[str, dict, list[tuple[str, dict]]]], timeouts: str = ""):
    """[(platform name, platform options, [(model id, model fields)])] -> a config function. Smart models
    share one intelligence rank, so which of them a fresh conversation gets is up to the bandit."""

    def make(url: str, data_dir: Path) -> str:
        text = server_toml(data_dir, gateway_key=GATEWAY_KEY, extra=f"[timeouts]\n{timeouts}\n")
        for name, options, models in platforms:
            text += platform(name, url, **options)
            for model_id, fields in models:
                rank = 1 if fields.get("pool") == "smart" else 2
                text += model_toml(name, model_id, rank, **fields)
        return text

    return make


SMART = {"pool": "smart"}
BALANCED = {"pool": "balanced"}
FAST_TIMEOUTS = "first_byte_s = 20\nstall_s = 20\nkeepalive_s = 5"

ONE_PLATFORM = config(
    [
        (
            "local",
            {},
            [
                ("smart-a", SMART),
                ("smart-b", SMART),
                ("smart-c", SMART),
                ("plain-a", BALANCED),
                ("plain-b", BALANCED),
                ("plain-c", BALANCED),
            ],
        )
    ]
)
BAN = config(
    [
        ("ban", {"protection": "provider-ban"}, [("b1", SMART), ("b2", SMART)]),
        ("other", {}, [("o1", BALANCED), ("o2", BALANCED)]),
    ]
)
SKIP = config(
    [
        ("skip", {"protection": "model-skip"}, [("s1", SMART), ("s2", SMART)]),
        ("other", {}, [("o1", BALANCED)]),
    ]
)


# ---- helpers ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def client_for(gw) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=60) as client:
        yield client


class Conversation:
    """A chat that sends its full history each turn, the assistant's replies included."""

    def __init__(self, gw, system: str | None = None, session_id: str | None = None) -> None:
        self.gw = gw
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.headers = {"X-Session-Id": session_id} if session_id else {}
        self.routed: list[str] = []
        self.request_ids: list[str] = []

    async def say(
        self, client: httpx.AsyncClient, text: str, *, mode: str = "auto-smart", first: str | None = None
    ) -> httpx.Response:
        """One turn; `first` names a model to try before the mode's chain (pins still apply after it)."""
        body: dict = {"model": mode, "messages": [*self.messages, {"role": "user", "content": text}]}
        if first is not None:
            body["models"] = [mode, first]
        with trio.fail_after(30):
            resp = await client.post(CHAT, json=body, headers=self.headers)
        assert resp.status_code == 200, resp.text
        self.messages = [*body["messages"], resp.json()["choices"][0]["message"]]
        self.routed.append(resp.headers["x-routed-via"])
        self.request_ids.append(resp.headers["x-request-id"])
        # The pin is request telemetry (committed within one batch window): let it land before the next turn.
        await settled(self.gw)
        return resp


def calls(state: UpstreamState, since: int = 0) -> list[tuple[str | None, str | None]]:
    """(API key, model) of each chat request the upstream received after index `since`."""
    return [(r.api_key, r.model) for r in state.requests[since:] if r.path == CHAT]


def decisions(data_dir: Path, request_id: str | None = None) -> list[RouteDecided]:
    return [
        e
        for e in read_log(data_dir)
        if isinstance(e, RouteDecided) and (request_id is None or e.request_id == request_id)
    ]


def of_type(data_dir: Path, kind: type) -> list:
    return [e for e in read_log(data_dir) if isinstance(e, kind)]


def used_a_pin(d: RouteDecided) -> bool:
    """A decision that took the session's pin scores only the pinned model (marked named) although the
    request named none."""
    named = [n for n in d.input.requested if n not in ("auto", "auto-smart", "auto-fast")]
    return d.input.use_pin and not named and len(d.candidates) == 1 and d.candidates[0].named


# ---- pins with the official SDK ---------------------------------------------------------------------------


async def sdk_conversation(
    client: openai.AsyncOpenAI, system: str, turns: int
) -> tuple[list[str], list[str]]:
    messages: list[dict] = [{"role": "system", "content": system}]
    routed, request_ids = [], []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"question {turn + 1}"})
        raw = await client.chat.completions.with_raw_response.create(model="auto-smart", messages=messages)
        completion = raw.parse()
        routed.append(raw.headers["x-routed-via"])
        request_ids.append(raw.headers["x-request-id"])
        reply = completion.choices[0].message
        messages.append({"role": "assistant", "content": reply.content})
    return routed, request_ids


async def test_sdk_three_turn_conversations_in_auto_smart_stay_on_one_model(tmp_path):
    with trio.fail_after(30):
        async with gateway_from(tmp_path, ONE_PLATFORM) as gw:
            client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)
            try:
                runs = [await sdk_conversation(client, f"You are assistant number {n}.", 3) for n in range(4)]
            finally:
                await client.close()
    for routed, _ in runs:
        assert len(set(routed)) == 1, routed
        assert routed[0] in ("local/smart-a", "local/smart-b", "local/smart-c")
    for _, request_ids in runs:
        first, *later = request_ids
        assert not any(used_a_pin(d) for d in decisions(gw.data_dir, first))
        for request_id in later:
            [d] = decisions(gw.data_dir, request_id)
            assert used_a_pin(d)  # the pin took the turn, not the bandit
    pins = of_type(gw.data_dir, SessionPinned)
    assert len(pins) == 12  # every successful turn (re)pins its conversation
    assert len({p.session for p in pins}) == 4


async def test_route_decided_records_that_the_pin_was_used(tmp_path):
    with trio.fail_after(30):
        async with gateway_from(tmp_path, ONE_PLATFORM) as gw, client_for(gw) as client:
            conversation = Conversation(gw, "You are terse.")
            for text in ("hi", "more", "again"):
                await conversation.say(client, text)
    flags = [
        d.pin_used for request_id in conversation.request_ids for d in decisions(gw.data_dir, request_id)
    ]
    assert flags == [False, True, True]


async def test_a_turn_sent_right_after_the_previous_answer_uses_the_pin(tmp_path, clock):
    with trio.fail_after(60):
        async with gateway_from(tmp_path, ONE_PLATFORM) as gw, client_for(gw) as client:
            second_turns = []
            for n in range(5):
                messages = [
                    {"role": "system", "content": f"You are agent {n}."},
                    {"role": "user", "content": "hi"},
                ]
                first = await client.post(CHAT, json={"model": "auto-smart", "messages": messages})
                messages += [
                    first.json()["choices"][0]["message"],
                    {"role": "user", "content": "tool result"},
                ]
                second = await client.post(CHAT, json={"model": "auto-smart", "messages": messages})
                second_turns.append(second.headers["x-request-id"])
            await settled(gw)
    assert all(used_a_pin(d) for request_id in second_turns for d in decisions(gw.data_dir, request_id))


async def test_two_conversations_that_open_with_hi_do_not_share_a_pin(tmp_path):
    with trio.fail_after(30):
        async with gateway_from(tmp_path, ONE_PLATFORM) as gw, client_for(gw) as client:
            one, two = Conversation(gw, "You help."), Conversation(gw, "You help.")
            # Same system prompt, same "hi"; their first turns are served by different models, so their
            # first replies differ ("Hello from smart-a." / "Hello from smart-b.").
            await one.say(client, "hi", first="local/smart-a")
            await two.say(client, "hi", first="local/smart-b")
            for _ in range(3):
                await one.say(client, "go on")
                await two.say(client, "go on")
    assert one.routed == ["local/smart-a"] * 4
    assert two.routed == ["local/smart-b"] * 4
    pins = of_type(gw.data_dir, SessionPinned)
    sessions = {p.session: p.model for p in pins}
    assert len(sessions) == 2 and sorted(sessions.values()) == ["smart-a", "smart-b"]


async def test_balanced_mode_never_pins_unless_the_client_names_its_session(tmp_path):
    with trio.fail_after(30):
        async with gateway_from(tmp_path, ONE_PLATFORM) as gw, client_for(gw) as client:
            free = Conversation(gw, "You are free.")
            for text in ("hi", "more", "again", "and again"):
                await free.say(client, text, mode="auto")
            assert not of_type(gw.data_dir, SessionPinned)
            for request_id in free.request_ids:
                for d in decisions(gw.data_dir, request_id):
                    assert (d.input.session, d.input.use_pin) == (None, False)
            named = {mode: Conversation(gw, session_id=f"thread-{mode}") for mode in ("auto", "auto-fast")}
            for mode, conversation in named.items():
                for text in ("hi", "more", "again", "and again"):
                    await conversation.say(client, text, mode=mode)
    pins = of_type(gw.data_dir, SessionPinned)
    assert len(pins) == 8
    assert all(p.session.startswith("h-") for p in pins)  # the header, hashed
    assert named["auto"].routed[0].startswith("local/plain-")  # the balanced chain has no smart models
    for conversation in named.values():
        assert len(set(conversation.routed)) == 1, conversation.routed
        assert all(
            used_a_pin(d)
            for request_id in conversation.request_ids[1:]
            for d in decisions(gw.data_dir, request_id)
        )


# ---- thread protection ------------------------------------------------------------------------------------


async def test_provider_ban_moves_the_conversation_off_the_platform_for_good(tmp_path, clock):
    state = UpstreamState()
    with trio.fail_after(120):
        async with gateway_from(tmp_path, BAN, state=state) as gw, client_for(gw) as client:
            conversation = Conversation(gw, "You are conversation one.")
            await conversation.say(client, "hi", first="ban/b1")
            await conversation.say(client, "more")
            assert conversation.routed == ["ban/b1", "ban/b1"]
            await settled(gw)

            state.behaviours["b1"] = "fail:503"  # the pinned model fails mid-conversation
            banned_at = len(state.requests)
            await conversation.say(client, "and now?")
            other = conversation.routed[-1]
            assert other.startswith("other/")
            assert calls(state, banned_at) == [("ban-key", "b1"), ("other-key", other.split("/")[1])]
            await settled(gw)
            [ban] = of_type(gw.data_dir, SessionBanned)
            assert (ban.platform, ban.reason) == ("ban", "provider-ban: server_error")
            assert len(of_type(gw.data_dir, SessionPinCleared)) == 1

            # The model recovers and its transient cooldown runs out; the conversation stays away anyway.
            del state.behaviours["b1"]
            await trio.sleep(20)
            await conversation.say(client, "still there?")
            assert conversation.routed[-1] == other
            # Its pin fails: the next candidates would be the smart ban/* models, but they are banned.
            state.behaviours[other.split("/")[1]] = "fail:503"
            await conversation.say(client, "hello?")
            last = conversation.routed[-1]
            assert last.startswith("other/") and last != other
            retry = decisions(gw.data_dir, conversation.request_ids[-1])[-1]
            banned = {e.ref for e in retry.excluded if e.reason.startswith("banned for this session")}
            assert banned == {"ban/b1", "ban/b2"}
            assert ("ban-key", "b1") not in calls(state, banned_at + 1)
            assert "ban-key" not in {key for key, _ in calls(state, banned_at + 1)}

            # The ban is this conversation's: another one still gets the (smart) ban platform.
            fresh = Conversation(gw, "You are conversation two.")
            await fresh.say(client, "hi")
            assert fresh.routed == [fresh.routed[0]] and fresh.routed[0].startswith("ban/")


async def test_a_provider_ban_on_the_first_turn_holds_for_the_conversation(tmp_path, clock):
    state = UpstreamState()
    with trio.fail_after(120):
        async with gateway_from(tmp_path, BAN, state=state) as gw, client_for(gw) as client:
            conversation = Conversation(gw, "You are conversation one.")
            state.behaviours["b1"] = "fail:503"
            banned_at = len(state.requests)
            await conversation.say(client, "hi", first="ban/b1")  # b1 fails: provider-ban, then other/*
            other = conversation.routed[-1]
            assert other.startswith("other/")
            del state.behaviours["b1"]
            await trio.sleep(20)
            state.behaviours[other.split("/")[1]] = "fail:503"  # the pin fails: would ban/* come back?
            await conversation.say(client, "more")
    assert conversation.routed[-1].startswith("other/")  # not the (smart, otherwise preferred) ban/b2
    assert "ban-key" not in {key for key, _ in calls(state, banned_at + 1)}
    assert [b.platform for b in of_type(gw.data_dir, SessionBanned)] == ["ban"]


async def test_model_skip_skips_only_the_model_for_that_request(tmp_path, clock):
    state = UpstreamState()
    with trio.fail_after(120):
        async with gateway_from(tmp_path, SKIP, state=state) as gw, client_for(gw) as client:
            conversation = Conversation(gw, "You are skippy.")
            await conversation.say(client, "hi", first="skip/s1")
            await settled(gw)
            state.behaviours["s1"] = "fail:503"
            before = len(state.requests)
            await conversation.say(client, "more")
            # Same platform, other model (smart beats the balanced other/o1 in auto-smart).
            assert calls(state, before) == [("skip-key", "s1"), ("skip-key", "s2")]
            assert conversation.routed[-1] == "skip/s2"
            retry = decisions(gw.data_dir, conversation.request_ids[-1])[-1]
            reasons = {e.ref: e.reason for e in retry.excluded}
            assert reasons["skip/s1"].startswith("skipped for this request: model-skip: server_error")
            assert "skip/s2" not in reasons
            await settled(gw)
            assert not of_type(gw.data_dir, SessionBanned)
            assert len(of_type(gw.data_dir, SessionPinCleared)) == 1

            # A later turn: s1 has recovered (cooldown over), the new pin s2 fails: s1 takes the turn.
            del state.behaviours["s1"]
            await trio.sleep(20)
            state.behaviours["s2"] = "fail:503"
            before = len(state.requests)
            await conversation.say(client, "again")
            assert calls(state, before) == [("skip-key", "s2"), ("skip-key", "s1")]
            assert conversation.routed[-1] == "skip/s1"


async def test_pins_and_bans_survive_a_restart(tmp_path):
    state = UpstreamState()
    data_dir = tmp_path / "data"
    pinned, banned = Conversation(None, "You are pinned."), Conversation(None, "You are banned.")
    with trio.fail_after(60):
        async with (
            gateway_from(tmp_path, BAN, state=state, data_dir=data_dir) as gw,
            client_for(gw) as client,
        ):
            pinned.gw = banned.gw = gw
            await pinned.say(client, "hi", first="ban/b2")
            await banned.say(client, "hi", first="ban/b1")
            state.behaviours["b1"] = "fail:503"
            await banned.say(client, "more")
            assert banned.routed[-1].startswith("other/")
        del state.behaviours["b1"]
        async with (
            gateway_from(tmp_path, BAN, state=state, data_dir=data_dir) as gw,
            client_for(gw) as client,
        ):
            pinned.gw = banned.gw = gw
            for text in ("back", "again"):
                await pinned.say(client, text)
            assert pinned.routed == ["ban/b2"] * 3
            assert all(used_a_pin(d) for d in decisions(data_dir, pinned.request_ids[-1]))
            await banned.say(client, "back")
            other = banned.routed[-1]
            assert other == banned.routed[-2]  # the pin made after the ban survived too
            state.behaviours[other.split("/")[1]] = "fail:503"
            before = len(state.requests)
            await banned.say(client, "hello?")
            assert banned.routed[-1].startswith("other/") and banned.routed[-1] != other
            assert "ban-key" not in {key for key, _ in calls(state, before)}
            retry = decisions(data_dir, banned.request_ids[-1])[-1]
            assert any(
                e.ref == "ban/b2" and e.reason.startswith("banned for this session") for e in retry.excluded
            )


# ---- single-flight ----------------------------------------------------------------------------------------


class _FailingDripConn(fault_upstream._Conn):
    """The fault upstream plus `drip-fail:<i>:<n>`: n content chunks i seconds apart, then (after i more
    seconds) an error frame, as a provider that breaks mid-answer sends it."""

    async def _chat(self, spec: str, model: str, body: dict, stream: bool) -> bool:
        name, *args = spec.split(":")
        if name != "drip-fail" or not stream:
            return await super()._chat(spec, model, body, stream)
        interval = float(args[0])
        answer = fault_upstream._build_answer("drip", args, model, body)
        role, *content = answer.head_frames()
        error = (
            b"data: " + msgspec.json.encode({"error": {"message": "upstream broke", "code": 503}}) + b"\n\n"
        )
        schedule = [
            (0.0, role),
            *((interval, f) for f in content),
            (interval, error),
            (0.0, fault_upstream._DONE),
        ]
        return await self._stream(None, schedule)


SINGLE_FLIGHT_MODELS = {
    "success": "drip:2:10",
    "upstream-error": "drip-fail:2:3",
    "stall": "stall-mid:60",
    "client-disconnect": "drip:2:30",
}
SINGLE_FLIGHT = config(
    [
        (
            "sf",
            {"protection": "provider-ban", "single_flight": True},
            [(m, {"fallback": False}) for m in SINGLE_FLIGHT_MODELS.values()] + [("ok", BALANCED)],
        ),
        ("other", {}, [("o1", BALANCED)]),
    ],
    timeouts=FAST_TIMEOUTS,
)


async def stream_a(
    client: httpx.AsyncClient, model: str, content: trio.Event, hang_up: trio.Event | None
) -> list[str]:
    """Session A streams from the single-flight platform; `content` is set at its first content chunk.
    With `hang_up`, A's client goes away once that is set."""
    body = {
        "model": "auto",
        "models": [f"sf/{model}"],
        "stream": True,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
    lines = []
    async with client.stream("POST", CHAT, json=body, headers={"X-Session-Id": "conversation-A"}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line:
                lines.append(line)
            if '"content"' in line:
                content.set()
                if hang_up is not None:
                    await hang_up.wait()
                    break
    return lines


async def no_requests_in_flight(gw) -> None:
    with trio.fail_after(60):
        # Polling an actor's statistics: there is no event to wait for (as in test_streams.py).
        while gw.runtime.requests.statistics().in_flight:  # noqa: ASYNC110
            await trio.sleep(0.01)
    await settled(gw)


@pytest.mark.parametrize("ending", list(SINGLE_FLIGHT_MODELS))
async def test_single_flight_platform_is_skipped_while_another_session_streams_there(
    tmp_path, clock, monkeypatch, ending
):
    monkeypatch.setattr(fault_upstream, "_Conn", _FailingDripConn)
    model = SINGLE_FLIGHT_MODELS[ending]
    b_body = {
        "model": "auto",
        "models": ["sf/ok", "other/o1"],
        "messages": [{"role": "user", "content": "hi"}],
    }
    b_headers = {"X-Session-Id": "conversation-B"}
    a_lines: list[str] = []
    with trio.fail_after(120):
        async with gateway_from(tmp_path, SINGLE_FLIGHT) as gw, client_for(gw) as client:
            async with trio.open_nursery() as nursery:
                content, hang_up = trio.Event(), trio.Event()

                async def run_a() -> None:
                    a_lines.extend(
                        await stream_a(
                            client, model, content, hang_up if ending == "client-disconnect" else None
                        )
                    )

                nursery.start_soon(run_a)
                await content.wait()
                await settled(gw)
                during = await client.post(CHAT, json=b_body, headers=b_headers)
                assert during.status_code == 200, during.text
                assert during.headers["x-routed-via"] == "other/o1"
                assert gw.runtime.requests.statistics().in_flight == 1  # A was still streaming meanwhile
                hang_up.set()
            await no_requests_in_flight(gw)
            after = await client.post(CHAT, json=b_body, headers=b_headers)
            assert after.status_code == 200, after.text
            assert after.headers["x-routed-via"] == "sf/ok"
    [skipped] = decisions(gw.data_dir, during.headers["x-request-id"])
    assert any(e.ref == "sf/ok" and e.reason.startswith("single-flight") for e in skipped.excluded)
    [free] = decisions(gw.data_dir, after.headers["x-request-id"])
    assert not any(e.reason.startswith("single-flight") for e in free.excluded)
    text = "\n".join(a_lines)
    if ending == "success":
        assert a_lines[-1] == "data: [DONE]" and '"error"' not in text
    elif ending == "upstream-error":
        assert '"error"' in text and "upstream broke" in text
    elif ending == "stall":
        assert '"stream_timeout"' in text
    else:
        [abandoned] = [e for e in read_log(gw.data_dir) if getattr(e, "kind", None) == "client_abort"]
        assert abandoned.platform == "sf"


# ---- replay and the sessions command ----------------------------------------------------------------------

REPLAYED = config(
    [
        (
            "ban",
            {"protection": "provider-ban", "single_flight": True},
            [("b1", SMART), ("b2", SMART), ("drip:2:10", {"fallback": False})],
        ),
        ("other", {}, [("o1", BALANCED), ("o2", BALANCED)]),
    ],
    timeouts=FAST_TIMEOUTS,
)


async def test_replay_reproduces_pinned_banned_and_single_flight_decisions(tmp_path, clock, capsys):
    state = UpstreamState()
    with trio.fail_after(120):
        async with gateway_from(tmp_path, REPLAYED, state=state) as gw, client_for(gw) as client:
            one, two = Conversation(gw, "You are one."), Conversation(gw, "You are two.")
            await one.say(client, "hi", first="ban/b1")
            await two.say(client, "hi")
            await settled(gw)
            for text in ("more", "again"):
                await one.say(client, text)
                await two.say(client, text)
            state.behaviours["b1"] = "fail:503"
            await one.say(client, "broken?")  # b1 fails: ban, then other/*
            await trio.sleep(20)
            del state.behaviours["b1"]
            await one.say(client, "still?")
            other = one.routed[-1].split("/")[1]
            state.behaviours[other] = "fail:503"  # the new pin fails: the banned platform stays out
            await one.say(client, "hello?")
            del state.behaviours[other]
            # Single-flight: while A streams on ban/*, a new session is kept off the platform.
            async with trio.open_nursery() as nursery:
                content = trio.Event()
                nursery.start_soon(stream_a_on_ban, client, content)
                await content.wait()
                await settled(gw)
                three = Conversation(gw, session_id="conversation-three")
                await three.say(client, "hi")
            assert three.routed[-1].startswith("other/")
            await no_requests_in_flight(gw)
    log = decisions(gw.data_dir)
    assert sum(used_a_pin(d) for d in log) >= 4
    assert any(e.reason.startswith("banned for this session") for d in log for e in d.excluded)
    assert any(e.reason.startswith("single-flight") for d in log for e in d.excluded)
    config_path = str(tmp_path / "switchboard.toml")

    capsys.readouterr()
    assert cli.main(["replay", "--config", config_path]) == 0
    out = capsys.readouterr().out
    assert "100.0%" in out and f"{len(log)} of {len(log)} decisions reproduced" in out

    assert cli.main(["sessions", "--config", config_path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["SESSION", "PINNED", "BANNED", "PLATFORMS", "LAST", "USE"]
    assert len(lines) == 1 + 4  # one, two, three and A
    assert sum("ban: provider-ban: server_error" in line for line in lines) == 1
    assert any(one.routed[-1] in line for line in lines)


async def stream_a_on_ban(client: httpx.AsyncClient, content: trio.Event) -> None:
    body = {
        "model": "auto",
        "models": ["ban/drip:2:10"],
        "stream": True,
        "messages": [{"role": "user", "content": "a long story"}],
    }
    async with client.stream("POST", CHAT, json=body, headers={"X-Session-Id": "conversation-A"}) as resp:
        async for line in resp.aiter_lines():
            if '"content"' in line:
                content.set()
