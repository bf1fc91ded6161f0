"""The admin API's keys, models and fallback, sessions and config routes (`/admin/api/...`; the contract is
docs/admin-api.md).

Reads ask the actors that own the state (the model-health actor's view, the stats actor's totals), so an
answer is one position of the log. Every change is one event appended durably (`append_durable`) before
the call answers: the log writer publishes a committed batch to the model-health actor before it answers
the writer's caller, so the next routing decision, and the answer built after the change, see it. While the
log cannot be written a change is refused with 503 `log_unwritable`: nothing is changed that the log
would not explain. Auth is not here: service/admin_auth.py guards every route before it runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import apsw
import msgspec
import trio
from msgspec import UNSET, Meta, UnsetType
from quart import Response, request
from quart_trio import QuartTrio

from actors.model_health import KeyView, ModelDetail, SessionView
from actors.request import LOG_RETRY_AFTER_S
from events.config_applied import last_config, plain
from events.op_stats import ModelCounters
from events.sqlite_store import unwritable_reason
from events.types import (
    CooldownsReset,
    Event,
    KeyAdded,
    KeyDisabled,
    KeyEnabled,
    KeyRemoved,
    LimitChanges,
    ModelUpdated,
    SessionBanLifted,
    SessionPinCleared,
)
from service.admin_context import AdminContext
from service.config import MAX_COUNT, Config
from service.edge import Answer, error_answer, quart_response, quoted
from service.secrets import MemoryVault, SecretsError, Vault, check_key_text, key_id_for, key_label

_encode = msgspec.json.encode
T = TypeVar("T")

MAX_TEXT = 200  # characters of a label or a reason
Rank = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
Limit = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]


# ---- bodies ----------------------------------------------------------------------------------------------


class KeyAddBody(msgspec.Struct, forbid_unknown_fields=True):
    platform: str
    key: str
    label: Text | None = None


class DisableBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Text | None = None


class ResetBody(msgspec.Struct, forbid_unknown_fields=True):
    model: str | None = None


class LimitsBody(msgspec.Struct, forbid_unknown_fields=True):
    rpm: Limit | UnsetType | None = UNSET
    rpd: Limit | UnsetType | None = UNSET
    tpm: Limit | UnsetType | None = UNSET
    tpd: Limit | UnsetType | None = UNSET


class ModelPatch(msgspec.Struct, forbid_unknown_fields=True):
    pool: Literal["fast", "balanced", "smart"] | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    in_chain: bool | UnsetType = UNSET
    intelligence_rank: Rank | UnsetType = UNSET
    limits: LimitsBody | UnsetType = UNSET


class EmptyBody(msgspec.Struct, forbid_unknown_fields=True):
    pass


_PATH = re.compile(r" - at `\$((?:\.[^`.\[]+|\[\d+\])*)`$")
_FIELD = re.compile(r"(?:unknown|required) field `([^`]*)`")


def field_of(error: msgspec.ValidationError) -> str | None:
    """The field a msgspec error is about, dotted (`$.limits.rpm` -> `limits.rpm`), the unknown or missing
    field's name included."""
    message = str(error)
    found = _PATH.search(message)
    path = [p for p in re.split(r"\.|(?=\[)", found.group(1)) if p] if found else []
    named = _FIELD.search(message)
    if named is not None:
        path.append(named.group(1))
    return ".".join(path) or None


HINTS = {"pool": " (fast, balanced or smart)"}


async def decode_body(cls: type[T], *, optional: bool = False) -> T | Answer:
    """The request's JSON body as `cls`, or the 400 naming the field. `optional`: no body reads as `{}`."""
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if optional and not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=cls)
    except msgspec.ValidationError as exc:
        field = field_of(exc)
        hint = HINTS.get(field or "", "")
        return error_answer(
            400,
            f"Invalid {field or 'body'}: {_PATH.sub('', str(exc))}{hint}.",
            "invalid_request_error",
            "invalid_field",
            param=field,
        )
    except msgspec.DecodeError:
        return error_answer(
            400, "The body must be a JSON object.", "invalid_request_error", "invalid_json", param=None
        )


def _json(body: object, status: int = 200) -> Response:
    return Response(_encode(body), status=status, content_type="application/json")


def _answer(answer: Answer) -> Response:
    return quart_response(answer)


def _bad(message: str, param: str) -> Answer:
    return error_answer(400, message, "invalid_request_error", "invalid_field", param=param)


def _not_found(message: str, param: str) -> Answer:
    return error_answer(404, message, "invalid_request_error", "not_found", param=param)


def _conflict(message: str, param: str | None = None) -> Answer:
    return error_answer(409, message, "invalid_request_error", "conflict", param=param)


def _unwritable(reason: str, held: bool) -> Answer:
    what = (
        "the change is held in memory and takes effect once the log can be written again"
        if held
        else "so nothing was changed"
    )
    return error_answer(
        503,
        f"The gateway cannot write its event log ({reason}): {what}; retry shortly. /healthz says why.",
        "server_error",
        "log_unwritable",
        headers={"Retry-After": str(int(LOG_RETRY_AFTER_S))},
    )


# ---- the objects of the contract ------------------------------------------------------------------------


def key_object(view: KeyView) -> dict[str, Any]:
    info = view.info
    return {
        "id": info.key_id,
        "platform": info.platform,
        "label": info.label,
        "source": info.source,
        "status": info.status,
        "reason": info.reason,
        "cooldowns": [
            {
                "model": model,
                "until": until,
                "kind": "forbidden" if model in view.forbidden else "rate_limited",
            }
            for model, until in view.cooling
        ],
    }


def chain_positions(details: list[ModelDetail]) -> dict[str, int]:
    """1-based positions of the enabled models in the chain, in the order a decision prefers them with no
    data: by intelligence rank (what `decide` scores), then the catalog's order (what breaks its ties)."""
    in_chain = [d.model for d in details if d.model.enabled and d.model.fallback and d.model.task == "chat"]
    ordered = sorted(enumerate(in_chain), key=lambda im: (im[1].intelligence_rank, im[0]))
    return {m.ref: pos for pos, (_, m) in enumerate(ordered, start=1)}


def model_object(d: ModelDetail, position: int | None, counters: ModelCounters | None) -> dict[str, Any]:
    m, s = d.model, d.score
    return {
        "ref": m.ref,
        "platform": m.platform,
        "id": m.id,
        "task": m.task,  # embedding models are never in the chain (their family stands in for them)
        "family": m.vectors,
        "pool": m.pool,
        "intelligence_rank": m.intelligence_rank,
        "speed_rank": m.speed_rank,
        "context_window": m.context_window,
        "limits": {"rpm": m.limits.rpm, "rpd": m.limits.rpd, "tpm": m.limits.tpm, "tpd": m.limits.tpd},
        "enabled": m.enabled,
        "in_chain": m.fallback,
        "chain_position": position,
        "usable_keys": d.usable_keys,
        "keys": d.keys,
        "cooldown_until": d.cooldown_until,
        "stats": {
            "successes": counters.successes if counters else 0,
            "failures": counters.failures if counters else 0,
            "decayed_successes": round(d.decayed_successes, 6),
            "decayed_failures": round(d.decayed_failures, 6),
            "tps": d.tps,
            "ttfb_ms": d.ttfb_ms,
        },
        "score": {
            "theta_mean": round(s.theta_mean, 6),
            "speed": round(s.speed, 6),
            "ttfb": round(s.ttfb, 6),
            "intelligence": round(s.intelligence, 6),
            "penalty": round(s.penalty, 6),
            "balanced": round(s.balanced, 6),
            "smart": round(s.smart, 6),
        },
    }


def session_object(s: SessionView) -> dict[str, Any]:
    pin = None
    if s.pin is not None:
        platform, model, key_id = s.pin
        pin = {"platform": platform, "model": model, "key_id": key_id, "used_at": s.pin_used_at}
    return {
        "session": s.session,
        "pin": pin,
        "bans": [{"platform": p, "reason": why} for p, why in s.bans],
        "last_use": s.last_use,
    }


def _without_secrets(url: str) -> str:
    """A base URL without credentials a user may have put in it (user:password@, a query string)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def effective_config(config: Config) -> dict[str, Any]:
    """The configuration in force, without secrets: keys only counted, tokens not at all, header names
    without their values (a header may carry a credential)."""
    return {
        "file": str(config.path) if config.path is not None else None,
        "server": {
            "host": config.host,
            "port": config.port,
            "data_dir": str(config.data_dir),
            **msgspec.to_builtins(config.limits),
        },
        "gateway": {"api_keys": len(config.api_keys)},
        "admin": {"token_configured": config.admin_token is not None},
        "timeouts": msgspec.to_builtins(config.timeouts),
        "routing": {"max_attempts": config.routing.max_attempts, **plain(config.routing.policy)},
        "sessions": msgspec.to_builtins(config.sessions),
        "snapshots": msgspec.to_builtins(config.snapshots),
        "catalog": {"builtin": config.builtin_catalog, "version": config.catalog_version},
        "platforms": [
            {
                "name": p.name,
                "kind": p.kind,
                "base_url": _without_secrets(p.base_url),
                "display_name": p.display_name,
                "env_var": p.env_var,
                "keys": {"config": len(p.keys), "env": len(config.env_keys.get(p.name, ()))},
                "protection": p.protection,
                "headers": sorted(p.headers),
                "timeout_s": p.timeout_s,
                "quota_day": p.quota_day,
                "single_flight": p.single_flight,
            }
            for p in config.platforms.values()
        ],
        "models": [
            {
                "ref": m.ref,
                "platform": m.platform,
                "id": m.id,
                "display_name": m.display_name,
                "pool": m.pool,
                "fallback": m.fallback,
                "enabled": m.enabled,
                "context_window": m.context_window,
                "rpm": m.rpm,
                "rpd": m.rpd,
                "tpm": m.tpm,
                "tpd": m.tpd,
                "intelligence_rank": m.intelligence_rank,
                "speed_rank": m.speed_rank,
            }
            for m in config.models
        ],
    }


# ---- the routes ------------------------------------------------------------------------------------------


class AdminApi:
    def __init__(self, admin: AdminContext, now: Callable[[], float] | None = None) -> None:
        self.admin = admin
        self.runtime = admin.runtime
        self._now = now or admin.runtime.clock.now

    async def commit(self, event: Event) -> Answer | None:
        """Append `event` durably; None once it is committed, else the 503 to answer."""
        log = self.runtime.log
        outage = log.outage()
        if outage is not None:
            return _unwritable(outage.reason, held=False)
        if await log.append_durable(event) is not None:
            return None
        outage = log.outage()
        return _unwritable(outage.reason if outage is not None else "unknown", held=True)

    # -- keys

    async def key(self, key_id: str) -> KeyView | Answer:
        for view in await self.runtime.health.keys():
            if view.info.key_id == key_id:
                return view
        return _not_found(f"No key {quoted(key_id)!r} (GET /admin/api/keys lists them by id).", "id")

    async def list_keys(self) -> Response:
        return _json({"data": [key_object(v) for v in await self.runtime.health.keys()]})

    async def add_key(self) -> Response:
        body = await decode_body(KeyAddBody)
        if isinstance(body, Answer):
            return _answer(body)
        config = self.admin.config
        if body.platform not in config.platforms:
            known = ", ".join(sorted(config.platforms)) or "none"
            return _answer(
                _bad(
                    f"Unknown platform {quoted(body.platform)!r}: a key needs a configured platform "
                    f"(configured: {known}).",
                    "platform",
                )
            )
        secret = body.key.strip()
        if not secret:
            return _answer(_bad("The key is empty: paste the provider's API key.", "key"))
        try:
            check_key_text(body.platform, secret, "the key")
        except SecretsError as exc:
            return _answer(_bad(f"{str(exc)[0].upper()}{str(exc)[1:]}.", "key"))
        label = body.label.strip() if body.label is not None else ""
        if body.label is not None and (not label or not label.isprintable()):
            return _answer(_bad("The label must be printable text, not empty.", "label"))
        key_id = key_id_for(self.admin.master_key, body.platform, secret)
        already = next((v for v in await self.runtime.health.keys() if v.info.key_id == key_id), None)
        if already is not None and already.info.source != "vault":
            return _json(key_object(already), 200)  # a config or environment key: stored there already
        outage = self.runtime.log.outage()
        if outage is not None:  # before the vault: a key stored that the log never announced helps nobody
            return _answer(_unwritable(outage.reason, held=False))
        try:
            await self.in_vault(lambda vault: vault.put(body.platform, secret))
        except apsw.Error as exc:
            return _answer(_unwritable(unwritable_reason(exc), held=False))
        self.admin.secrets[key_id] = secret
        if already is not None:
            return _json(key_object(already), 200)
        failed = await self.commit(
            KeyAdded(
                ts=self._now(),
                key_id=key_id,
                platform=body.platform,
                label=label or key_label(secret),
                source="vault",
            )
        )
        if failed is not None:
            return _answer(failed)
        added = await self.key(key_id)
        return _json(key_object(added), 201) if isinstance(added, KeyView) else _answer(added)

    async def disable_key(self, key_id: str) -> Response:
        body = await decode_body(DisableBody, optional=True)
        if isinstance(body, Answer):
            return _answer(body)
        return await self._key_change(
            key_id, KeyDisabled(ts=self._now(), key_id=key_id, reason=body.reason or "by operator")
        )

    async def enable_key(self, key_id: str) -> Response:
        body = await decode_body(EmptyBody, optional=True)
        if isinstance(body, Answer):
            return _answer(body)
        return await self._key_change(key_id, KeyEnabled(ts=self._now(), key_id=key_id))

    async def reset_cooldowns(self, key_id: str) -> Response:
        body = await decode_body(ResetBody, optional=True)
        if isinstance(body, Answer):
            return _answer(body)
        view = await self.key(key_id)
        if isinstance(view, Answer):
            return _answer(view)
        if body.model is not None and not any(
            a.model.platform == view.info.platform and a.model.id == body.model
            for a in await self.runtime.health.models()
        ):
            return _answer(_bad(f"{view.info.platform} has no model {quoted(body.model)!r}.", "model"))
        return await self._key_change(key_id, CooldownsReset(ts=self._now(), key_id=key_id, model=body.model))

    async def _key_change(self, key_id: str, event: Event) -> Response:
        view = await self.key(key_id)
        if isinstance(view, Answer):
            return _answer(view)
        failed = await self.commit(event)
        if failed is not None:
            return _answer(failed)
        changed = await self.key(key_id)
        return _json(key_object(changed)) if isinstance(changed, KeyView) else _answer(changed)

    async def remove_key(self, key_id: str) -> Response:
        view = await self.key(key_id)
        if isinstance(view, Answer):
            return _answer(view)
        info = view.info
        if info.source != "vault":
            platform = self.admin.config.platforms.get(info.platform)
            where = (
                f"[[platforms]] keys of {info.platform} in {self.admin.config.path or 'the config'}"
                if info.source == "config"
                else f"${platform.env_var if platform else 'the platform variable'}"
            )
            return _answer(
                _conflict(
                    f"Key {key_id} comes from the {info.source}: remove it from {where} and restart, or "
                    "disable it here (POST /admin/api/keys/{id}/disable)."
                )
            )
        # Out of the vault first: a removal the log holds during an outage (or that a crash loses) must not
        # bring the key back at the next start, which announces vault keys the log does not know. The
        # secret stays in memory until the removal is committed: routing may use the key until then.
        outage = self.runtime.log.outage()
        if outage is not None:
            return _answer(_unwritable(outage.reason, held=False))
        try:
            await self.in_vault(lambda vault: vault.remove(key_id))
        except apsw.Error as exc:
            return _answer(_unwritable(unwritable_reason(exc), held=False))
        failed = await self.commit(KeyRemoved(ts=self._now(), key_id=key_id, reason="removed by operator"))
        if failed is not None:
            return _answer(failed)
        self.admin.secrets.pop(key_id, None)
        return Response(b"", status=204)

    async def in_vault(self, change: Callable[[Vault | MemoryVault], object]) -> None:
        """Make a change to the vault off the event loop: on a connection of its own in a worker thread,
        since another process holding the database's write lock would block it for the busy timeout."""
        vault = self.admin.vault
        if not isinstance(vault, Vault):
            change(vault)
            return

        def apply() -> None:
            own = Vault(vault.path, self.admin.master_key)
            try:
                change(own)
            finally:
                own.close()

        await trio.to_thread.run_sync(apply)

    async def check_key(self, key_id: str) -> Response:
        view = await self.key(key_id)
        if isinstance(view, Answer):
            return _answer(view)
        outage = self.runtime.log.outage()
        if outage is not None:  # before calling the provider: a check the log cannot record changes nothing
            return _answer(_unwritable(outage.reason, held=False))
        result = await self.runtime.key_checker.check_now(view.info.platform, key_id)
        failed = await self.commit(result)
        if failed is not None:
            return _answer(failed)
        checked = await self.key(key_id)
        if isinstance(checked, Answer):
            return _answer(checked)
        return _json(
            {
                "key": key_object(checked),
                "ok": result.ok,
                "status": checked.info.status,
                "message": result.message or ("the provider accepted the key" if result.ok else ""),
            }
        )

    # -- models

    async def _models(self) -> tuple[list[ModelDetail], dict[str, int], dict[str, ModelCounters]]:
        details = await self.runtime.health.models_detail()
        counters = {c.ref: c for c in await self.runtime.stats.snapshot()}
        return details, chain_positions(details), counters

    async def list_models(self) -> Response:
        details, positions, counters = await self._models()
        last = len(positions) + 1
        ordered = sorted(
            details, key=lambda d: positions.get(d.model.ref, last)
        )  # stable: the rest keep order
        return _json(
            {
                "data": [
                    model_object(d, positions.get(d.model.ref), counters.get(d.model.ref)) for d in ordered
                ]
            }
        )

    async def model(self, platform: str, model_id: str) -> Response:
        details, positions, counters = await self._models()
        for d in details:
            if d.model.platform == platform and d.model.id == model_id:
                return _json(model_object(d, positions.get(d.model.ref), counters.get(d.model.ref)))
        return _answer(self._no_model(platform, model_id))

    def _no_model(self, platform: str, model_id: str) -> Answer:
        return _not_found(
            f"No model {quoted(platform + '/' + model_id)!r} in the catalog "
            "(GET /admin/api/models lists them).",
            "model",
        )

    async def patch_model(self, platform: str, model_id: str) -> Response:
        body = await decode_body(ModelPatch)
        if isinstance(body, Answer):
            return _answer(body)
        details = await self.runtime.health.models_detail()
        if not any(d.model.platform == platform and d.model.id == model_id for d in details):
            return _answer(self._no_model(platform, model_id))
        limits = None
        if not isinstance(body.limits, UnsetType):
            limits = LimitChanges(**msgspec.structs.asdict(body.limits))
        event = ModelUpdated(
            ts=self._now(),
            platform=platform,
            model=model_id,
            enabled=None if isinstance(body.enabled, UnsetType) else body.enabled,
            fallback=None if isinstance(body.in_chain, UnsetType) else body.in_chain,
            pool=None if isinstance(body.pool, UnsetType) else body.pool,
            intelligence_rank=None
            if isinstance(body.intelligence_rank, UnsetType)
            else body.intelligence_rank,
            limits=limits,
        )
        changes = (event.enabled, event.fallback, event.pool, event.intelligence_rank)
        if all(c is None for c in changes) and (limits is None or not limits.given()):
            return _answer(
                error_answer(
                    400,
                    "The body changes nothing: give any of pool, enabled, in_chain, intelligence_rank, "
                    "limits.",
                    "invalid_request_error",
                    "invalid_field",
                )
            )
        failed = await self.commit(event)
        if failed is not None:
            return _answer(failed)
        return await self.model(platform, model_id)

    # -- sessions

    async def session(self, session: str) -> SessionView | Answer:
        for s in await self.runtime.health.sessions():
            if s.session == session:
                return s
        return _not_found(
            f"No live session {quoted(session)!r} (it may have expired; GET /admin/api/sessions lists them).",
            "session",
        )

    async def list_sessions(self) -> Response:
        return _json({"data": [session_object(s) for s in await self.runtime.health.sessions()]})

    async def get_session(self, session: str) -> Response:
        found = await self.session(session)
        return _json(session_object(found)) if isinstance(found, SessionView) else _answer(found)

    async def clear_pin(self, session: str) -> Response:
        found = await self.session(session)
        if isinstance(found, Answer):
            return _answer(found)
        if found.pin is not None:
            # The session actor holds no pins (only this request's conversation and admissions): the
            # routing view folds pins from the log, so the event is the whole change.
            failed = await self.commit(
                SessionPinCleared(ts=self._now(), session=session, reason="cleared by operator")
            )
            if failed is not None:
                return _answer(failed)
        return await self.get_session(session)

    async def lift_ban(self, session: str, platform: str) -> Response:
        found = await self.session(session)
        if isinstance(found, Answer):
            return _answer(found)
        if platform not in dict(found.bans):
            return _answer(
                _not_found(f"Session {session} has no ban on platform {quoted(platform)!r}.", "platform")
            )
        failed = await self.commit(SessionBanLifted(ts=self._now(), session=session, platform=platform))
        if failed is not None:
            return _answer(failed)
        return await self.get_session(session)

    # -- config

    async def config(self) -> Response:
        def recorded() -> tuple[str, float] | None:
            store = self.admin.open_reader()
            try:
                last = last_config(store)
            finally:
                store.close()
            return (last.hash, last.ts) if last is not None else None

        found = await trio.to_thread.run_sync(recorded)
        config_hash, applied_at = found if found is not None else (None, None)
        return _json(
            {"hash": config_hash, "applied_at": applied_at, "config": effective_config(self.admin.config)}
        )


def register(app: QuartTrio, admin: AdminContext) -> None:
    api = AdminApi(admin)
    keys, models, sessions = "/admin/api/keys", "/admin/api/models", "/admin/api/sessions"
    routes: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", keys, api.list_keys),
        ("POST", keys, api.add_key),
        ("POST", keys + "/<key_id>/disable", api.disable_key),
        ("POST", keys + "/<key_id>/enable", api.enable_key),
        ("DELETE", keys + "/<key_id>", api.remove_key),
        ("POST", keys + "/<key_id>/check", api.check_key),
        ("POST", keys + "/<key_id>/reset-cooldowns", api.reset_cooldowns),
        ("GET", models, api.list_models),
        ("GET", models + "/<platform>/<path:model_id>", api.model),
        ("PATCH", models + "/<platform>/<path:model_id>", api.patch_model),
        ("GET", sessions, api.list_sessions),
        ("GET", sessions + "/<session>", api.get_session),
        ("DELETE", sessions + "/<session>/pin", api.clear_pin),
        ("DELETE", sessions + "/<session>/bans/<platform>", api.lift_ban),
        ("GET", "/admin/api/config", api.config),
    ]
    for method, rule, handler in routes:
        app.add_url_rule(rule, f"admin_api.{handler.__name__}", handler, methods=[method])
