"""What the operators' surface (admin API, feed, console, metrics) is given besides the runtime: the admin
token check and console sessions, the vault and key material for keys added over HTTP, a way to read the
log off the event loop, and the effective configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.supervisor import Runtime
from events.store import LogStore
from service.secrets import TokenCheck

if TYPE_CHECKING:
    from service.admin_auth import AdminAuth
    from service.config import Config
    from service.secrets import MemoryVault, Vault


@dataclass
class AdminContext:
    runtime: Runtime
    admin_tokens: TokenCheck
    auth: AdminAuth
    config: Config
    vault: Vault | MemoryVault
    master_key: bytes
    # Key material by key id as the transport reads it (service/server.py: Keyring.secrets): a key added over
    # HTTP is put here too, a removed one taken out.
    secrets: dict[str, str]
    # Opens another connection to the log, read-only, for reads made in a worker thread
    # (`trio.to_thread.run_sync`): histories, catch-up of the feed, a request's events. The caller closes it.
    open_reader: Callable[[], LogStore]
