"""Secrets: the master key, provider keys encrypted at rest, and hashed gateway and admin tokens.

Provider keys must be sent upstream, so they are stored reversibly: AES-GCM under a master key that lives in
`SWITCHBOARD_SECRET_KEY` or a 0600 file in the data dir, never in the database beside the ciphertext (a
copied database alone reveals nothing). Gateway and admin tokens are only ever checked, so only their hashes
are kept.

Error handling: every failure is a `SecretsError` with a one-line message meant for the operator. Messages
name key ids, paths and expected formats, never a secret, a token or the master key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from secrets import token_urlsafe

import apsw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR = "SWITCHBOARD_SECRET_KEY"
KEY_FILE = "master.key"
KINDS = ("gateway", "admin")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HASH = re.compile(r"sha256:[0-9a-fA-F]{64}")
_BUSY_TIMEOUT_MS = 5000


class SecretsError(Exception):
    """A secret could not be loaded, stored or decrypted. The message never contains a secret."""


# --- the master key ---------------------------------------------------------------------------------------


class MasterKeyMismatch(SecretsError):
    """The master key is not the one the data dir was written with."""


def open_vault(data_dir: Path, db_path: Path, env: Mapping[str, str]) -> tuple[bytes, Vault]:
    """The master key and the vault, checked against each other. A master key that does not match the data
    dir stops here with what happened and how to recover; a missing master.key is never replaced by a new
    one for a data dir that was written with the old one."""
    key_file = data_dir / KEY_FILE
    from_env = bool(env.get(ENV_VAR, "").strip())
    existed = key_file.exists()
    master_key = load_master_key(data_dir, env)
    vault = Vault(db_path, master_key)
    if vault.matches_master_key():
        return master_key, vault
    vault.close()
    if from_env:
        raise MasterKeyMismatch(
            f"{ENV_VAR} is not the master key {db_path} was written with: set it back to that key "
            f"(or unset it to use {key_file}); with another key the stored provider keys cannot be "
            "decrypted and every key's history is orphaned"
        )
    if not existed:
        key_file.unlink(missing_ok=True)  # the one just made: it must not stand in for the lost one
        raise MasterKeyMismatch(
            f"{key_file} is missing, but {db_path} was written with it: restore it from a backup (or "
            f"set {ENV_VAR} to it); to start over without the stored keys, move {db_path} away"
        )
    raise MasterKeyMismatch(
        f"{key_file} is not the master key {db_path} was written with: restore the original from a "
        f"backup (or set {ENV_VAR} to it); to start over without the stored keys, move {db_path} away"
    )


def load_master_key(data_dir: Path, env: Mapping[str, str]) -> bytes:
    """The 32-byte AES key: from the environment if set, else from `data_dir/master.key`, created if missing.

    An empty `SWITCHBOARD_SECRET_KEY` counts as unset, because container files commonly pass
    `VAR=${VAR:-}` through; any other value must parse, so a typo is never replaced by a fresh key.
    """
    value = env.get(ENV_VAR, "").strip()
    if value:
        return _parse_env_key(value)
    return _load_or_create_key_file(data_dir / KEY_FILE)


def _parse_env_key(value: str) -> bytes:
    # Hex first: 64 hex characters are also valid base64 (of 48 bytes), and hex is what we tell people to use.
    if _HEX64.fullmatch(value):
        return bytes.fromhex(value)
    std = value.replace("-", "+").replace("_", "/")  # accept urlsafe and standard alphabets alike
    try:
        key = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretsError(
            f"{ENV_VAR} must be 64 hex characters or the base64 of 32 bytes; "
            "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def _load_or_create_key_file(path: Path) -> bytes:
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    key = os.urandom(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with mode 0600 at creation: the file is never readable by others, not even between a create
        # and a chmod, and two first starts cannot both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)  # another process created it first: use theirs
    except OSError as exc:
        raise SecretsError(f"cannot create master key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)  # a half-written key would block every later start
        raise SecretsError(f"cannot write master key file {path}: {exc.strerror}") from None
    return key


def _read_key_file(path: Path) -> bytes:
    """Raises FileNotFoundError when the file is missing; every other problem is a SecretsError."""
    try:
        mode = path.stat().st_mode
        # Refuse rather than use or fix: a key others could read may already have been copied.
        if os.name == "posix" and mode & 0o077:
            raise SecretsError(
                f"master key file {path} is accessible to group or others (mode {mode & 0o777:04o}); "
                f"run: chmod 600 {path}"
            )
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise SecretsError(f"cannot read master key file {path}: {reason}") from None
    if not _HEX64.fullmatch(text):
        raise SecretsError(f"master key file {path} is malformed: expected 64 hex characters")
    return bytes.fromhex(text)


# --- provider keys ----------------------------------------------------------------------------------------


def key_id_for(master_key: bytes, platform: str, secret: str) -> str:
    """A stable id that reveals nothing about the secret without the master key (a keyed hash, not a hash)."""
    digest = hmac.new(master_key, f"{platform}\0{secret}".encode(), hashlib.sha256).hexdigest()
    return f"{platform}.{digest[:10]}"


def key_label(secret: str) -> str:
    """What humans see: the last 4 characters, enough to match a dashboard; short secrets show none."""
    return "…" if len(secret) < 12 else "…" + secret[-4:]


def _check_master_key(master_key: bytes) -> AESGCM:
    if len(master_key) != 32:
        raise SecretsError(f"the master key must be 32 bytes, got {len(master_key)}")
    return AESGCM(master_key)


def _seal(aead: AESGCM, key_id: str, secret: str) -> tuple[bytes, bytes]:
    # The key id is the associated data, so a ciphertext moved onto another row fails to decrypt.
    nonce = os.urandom(12)
    return nonce, aead.encrypt(nonce, secret.encode(), key_id.encode())


def _open(aead: AESGCM, key_id: str, nonce: bytes, ciphertext: bytes) -> str:
    try:
        return aead.decrypt(nonce, ciphertext, key_id.encode()).decode()
    except InvalidTag:
        raise SecretsError(
            f"cannot decrypt key {key_id}: the master key differs from the one it was stored with "
            f"(check {ENV_VAR} or {KEY_FILE}), or the stored data was altered"
        ) from None


def _check_put(platform: str, secret: str) -> None:
    if not platform:
        raise SecretsError("a provider key needs a platform name")
    if not secret:
        raise SecretsError(f"empty key for platform {platform}")
    check_key_text(platform, secret, "the key given")


def check_key_text(platform: str, secret: str, where: str) -> None:
    """A key travels in an HTTP header: visible ASCII only. A pasted zero-width space or line break would
    fail every request sent with it (and could leak the key into an error message)."""
    bad = next((i for i, c in enumerate(secret) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise SecretsError(
            f"{where} for platform {platform} has a character a provider cannot receive in a header "
            f"(character {bad + 1}: a space, a line break or a non-ASCII character); copy the key again"
        )


def _connect(db_path: Path) -> apsw.Connection:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = apsw.Connection(str(db_path))
    conn.set_busy_timeout(_BUSY_TIMEOUT_MS)  # the log writer and the CLI share this file
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    return conn


class Vault:
    """Provider keys encrypted at rest (AES-GCM, 96-bit random nonce, associated data = key_id) in SQLite.

    The table lives in the same file as the event log; this class touches only `vault`.
    """

    def __init__(self, db_path: Path, master_key: bytes) -> None:
        self._aead = _check_master_key(master_key)
        self._master_key = master_key
        self.path = db_path
        self._conn = _connect(db_path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS vault(key_id TEXT PRIMARY KEY, platform TEXT NOT NULL, "
            "label TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, created REAL NOT NULL)"
        )
        # A check value of the master key (never the key): the data dir knows which key it was written with.
        # Key ids are derived from the master key too, so a different key orphans every key's history even
        # when the vault is empty.
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS vault_check(id INTEGER PRIMARY KEY CHECK (id = 1), "
            "value BLOB NOT NULL)"
        )

    def matches_master_key(self) -> bool:
        """Whether this data dir was written with this master key (the first call records that it was)."""
        check = hmac.new(self._master_key, b"switchboard master key check", hashlib.sha256).digest()
        self._conn.execute("INSERT OR IGNORE INTO vault_check(id, value) VALUES (1, ?)", (check,))
        row = self._conn.execute("SELECT value FROM vault_check WHERE id = 1").fetchone()
        return row is not None and hmac.compare_digest(row[0], check)

    def put(self, platform: str, secret: str) -> tuple[str, bool]:
        """Store a key; returns (key_id, created). The same secret again is a no-op (created False)."""
        _check_put(platform, secret)
        key_id = key_id_for(self._master_key, platform, secret)
        nonce, ciphertext = _seal(self._aead, key_id, secret)
        # INSERT OR IGNORE keeps put idempotent even when two processes add the same key at once.
        self._conn.execute(
            "INSERT OR IGNORE INTO vault(key_id, platform, label, nonce, ciphertext, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, platform, key_label(secret), nonce, ciphertext, time.time()),
        )
        return key_id, self._conn.changes() == 1

    def get(self, key_id: str) -> str:
        row = self._conn.execute("SELECT nonce, ciphertext FROM vault WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise SecretsError(f"no stored key {key_id}")
        nonce, ciphertext = row
        return _open(self._aead, key_id, bytes(nonce), bytes(ciphertext))

    def items(self) -> list[tuple[str, str, str]]:
        rows = self._conn.execute("SELECT key_id, platform, label FROM vault ORDER BY created, rowid")
        return [(str(k), str(p), str(lbl)) for k, p, lbl in rows]

    def remove(self, key_id: str) -> bool:
        self._conn.execute("DELETE FROM vault WHERE key_id = ?", (key_id,))
        return self._conn.changes() == 1

    def close(self) -> None:
        self._conn.close()


class MemoryVault:
    """The vault in a dict, still encrypting, so tests exercise the same sealing as the SQLite vault."""

    def __init__(self, master_key: bytes) -> None:
        self._aead = _check_master_key(master_key)
        self._master_key = master_key
        # key_id -> (platform, label, nonce, ciphertext); dicts keep insertion (creation) order.
        self._rows: dict[str, tuple[str, str, bytes, bytes]] = {}

    def put(self, platform: str, secret: str) -> tuple[str, bool]:
        _check_put(platform, secret)
        key_id = key_id_for(self._master_key, platform, secret)
        if key_id in self._rows:
            return key_id, False
        nonce, ciphertext = _seal(self._aead, key_id, secret)
        self._rows[key_id] = (platform, key_label(secret), nonce, ciphertext)
        return key_id, True

    def get(self, key_id: str) -> str:
        if key_id not in self._rows:
            raise SecretsError(f"no stored key {key_id}")
        _, _, nonce, ciphertext = self._rows[key_id]
        return _open(self._aead, key_id, nonce, ciphertext)

    def items(self) -> list[tuple[str, str, str]]:
        return [(key_id, platform, label) for key_id, (platform, label, _, _) in self._rows.items()]

    def remove(self, key_id: str) -> bool:
        return self._rows.pop(key_id, None) is not None

    def close(self) -> None:
        pass


# --- gateway and admin tokens -----------------------------------------------------------------------------


def hash_token(token: str) -> str:
    # Plain SHA-256 suffices: generated tokens carry 256 bits of entropy, so there is nothing to brute-force.
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def generate_token(prefix: str) -> str:
    return prefix + token_urlsafe(32)


def normalise_token(value: str) -> str:
    """A config value as a hash: "sha256:<64 hex>" is taken as a hash, anything else as a plaintext token."""
    if value.lower().startswith("sha256:"):
        # A near-miss hash must not quietly become a plaintext token that nobody can ever present.
        if not _HASH.fullmatch(value):
            raise SecretsError("a token starting with sha256: must be followed by exactly 64 hex characters")
        return value.lower()
    if not value:
        raise SecretsError("empty token in configuration")  # hashing it would let an empty bearer in
    return hash_token(value)


class TokenCheck:
    """Constant-time check of a presented bearer token against a set of hashes."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = [h.lower().encode() for h in hashes]

    def ok(self, presented: str) -> bool:
        candidate = hash_token(presented).encode()
        matched = False
        # Compare with every hash, never stopping at a match, so timing reveals neither which nor whether.
        for stored in self._hashes:
            matched |= hmac.compare_digest(candidate, stored)
        return matched and presented != ""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"credential kind must be one of {KINDS}, got {kind!r}")


def _check_hash(token_hash: str) -> str:
    # Guards against a caller passing a plaintext token where a hash belongs: it would be stored in the clear.
    if not _HASH.fullmatch(token_hash):
        raise SecretsError("a stored credential must be a hash of the form sha256:<64 hex characters>")
    return token_hash.lower()


class CredentialStore:
    """Hashed gateway keys and admin token that the gateway generated itself, in the same SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self._conn = _connect(db_path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS credentials("
            "kind TEXT NOT NULL, hash TEXT NOT NULL, created REAL NOT NULL)"
        )

    def hashes(self, kind: str) -> list[str]:
        _check_kind(kind)
        rows = self._conn.execute(
            "SELECT hash FROM credentials WHERE kind = ? ORDER BY created, rowid", (kind,)
        )
        return [str(h) for (h,) in rows]

    def ensure(self, kind: str, prefix: str) -> str | None:
        """If no token of this kind exists, mint one, store its hash, return the plaintext to print once."""
        _check_kind(kind)
        # IMMEDIATE takes the write lock before the check, so two first starts cannot both mint a token.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            exists = self._conn.execute(
                "SELECT 1 FROM credentials WHERE kind = ? LIMIT 1", (kind,)
            ).fetchone()
            token = None if exists else generate_token(prefix)
            if token is not None:
                self._insert(kind, hash_token(token))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return token

    def add(self, kind: str, token_hash: str) -> None:
        _check_kind(kind)
        self._insert(kind, _check_hash(token_hash))

    def _insert(self, kind: str, token_hash: str) -> None:
        self._conn.execute(
            "INSERT INTO credentials(kind, hash, created) SELECT ?, ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM credentials WHERE kind = ? AND hash = ?)",
            (kind, token_hash, time.time(), kind, token_hash),
        )

    def close(self) -> None:
        self._conn.close()


class MemoryCredentialStore:
    """The credential store in a list, for tests and --memory runs."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, str]] = []

    def hashes(self, kind: str) -> list[str]:
        _check_kind(kind)
        return [h for k, h in self._rows if k == kind]

    def ensure(self, kind: str, prefix: str) -> str | None:
        if self.hashes(kind):
            return None
        token = generate_token(prefix)
        self._rows.append((kind, hash_token(token)))
        return token

    def add(self, kind: str, token_hash: str) -> None:
        _check_kind(kind)
        token_hash = _check_hash(token_hash)
        if (kind, token_hash) not in self._rows:
            self._rows.append((kind, token_hash))

    def close(self) -> None:
        pass
