"""Secrets: master key loading, the encrypted vault, token hashing and the credential store."""

from __future__ import annotations

import base64
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest

from service.secrets import (
    CredentialStore,
    MemoryCredentialStore,
    MemoryVault,
    SecretsError,
    TokenCheck,
    Vault,
    generate_token,
    hash_token,
    key_id_for,
    key_label,
    load_master_key,
    normalise_token,
)

SECRET = "gsk_live_Zq81fJ2kLm0pXyTestSecret9a1b2"
OTHER = "sk-or-v1-0123456789abcdefOtherSecretc3d4"
MASTER = bytes(range(32))
WRONG = bytes(range(1, 33))

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def raw_bytes(db_path: Path) -> bytes:
    """The database file plus any WAL/SHM sidecars: what an attacker who copied the data dir would have."""
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


# --- master key -------------------------------------------------------------------------------------------


@posix_only
def test_master_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = load_master_key(data_dir, {})
    path = data_dir / "master.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()
    assert load_master_key(data_dir, {}) == key


@posix_only
def test_group_readable_master_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(os.urandom(32).hex())
    path.chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600") as err:
        load_master_key(tmp_path, {})
    assert path.read_text() not in str(err.value)


def test_malformed_master_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not-a-key")
    os.close(fd)
    with pytest.raises(SecretsError, match="64 hex"):
        load_master_key(tmp_path, {})


@pytest.mark.parametrize(
    "encode",
    [
        bytes.hex,
        lambda k: k.hex().upper(),
        lambda k: base64.b64encode(k).decode(),
        lambda k: base64.urlsafe_b64encode(k).decode(),
        lambda k: base64.urlsafe_b64encode(k).decode().rstrip("="),
    ],
    ids=["hex", "HEX", "base64", "urlsafe", "unpadded"],
)
def test_env_key_is_accepted(tmp_path: Path, encode: Callable[[bytes], str]) -> None:
    key = os.urandom(32)
    assert load_master_key(tmp_path, {"SWITCHBOARD_SECRET_KEY": encode(key)}) == key
    assert not (tmp_path / "master.key").exists()  # the env key wins; no file is written


@pytest.mark.parametrize(
    "value",
    ["abc", "zz" * 32, os.urandom(31).hex(), base64.b64encode(os.urandom(16)).decode(), "é" * 44],
    ids=["short", "not-hex", "31-bytes-hex", "16-bytes-b64", "non-ascii"],
)
def test_bad_env_key_is_refused_without_echoing_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(SecretsError, match="64 hex characters or the base64 of 32 bytes") as err:
        load_master_key(tmp_path, {"SWITCHBOARD_SECRET_KEY": value})
    assert value not in str(err.value)


# --- key ids and labels -----------------------------------------------------------------------------------


def test_key_id_is_stable_and_secret_free() -> None:
    key_id = key_id_for(MASTER, "groq", SECRET)
    assert key_id == key_id_for(MASTER, "groq", SECRET)
    assert key_id.startswith("groq.") and len(key_id) == len("groq.") + 10
    assert SECRET not in key_id and SECRET[-4:] not in key_id
    assert key_id != key_id_for(MASTER, "cerebras", SECRET)
    assert key_id != key_id_for(WRONG, "groq", SECRET)


def test_label_shows_only_the_last_4() -> None:
    assert key_label(SECRET) == "…a1b2"
    assert key_label("0123456789ab") == "…89ab"
    assert key_label("short-key") == "…"
    assert key_label("") == "…"


# --- the vault, both backends -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def vault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vault | MemoryVault]:
    v = Vault(tmp_path / "switchboard.db", MASTER) if request.param == "sqlite" else MemoryVault(MASTER)
    yield v
    v.close()


def test_round_trip(vault: Vault | MemoryVault) -> None:
    key_id, created = vault.put("groq", SECRET)
    assert created
    assert vault.get(key_id) == SECRET


def test_put_is_idempotent(vault: Vault | MemoryVault) -> None:
    first = vault.put("groq", SECRET)
    assert vault.put("groq", SECRET) == (first[0], False)
    assert len(vault.items()) == 1


def test_items_and_remove(vault: Vault | MemoryVault) -> None:
    a, _ = vault.put("groq", SECRET)
    b, _ = vault.put("openrouter", OTHER)
    assert vault.items() == [(a, "groq", "…a1b2"), (b, "openrouter", "…c3d4")]
    assert vault.remove(a)
    assert not vault.remove(a)
    assert vault.items() == [(b, "openrouter", "…c3d4")]
    with pytest.raises(SecretsError, match="no stored key"):
        vault.get(a)


def test_empty_secret_is_refused(vault: Vault | MemoryVault) -> None:
    with pytest.raises(SecretsError):
        vault.put("groq", "")


def test_master_key_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="32 bytes"):
        MemoryVault(b"short")
    with pytest.raises(SecretsError, match="32 bytes"):
        Vault(tmp_path / "switchboard.db", b"short")


# --- the vault on disk ------------------------------------------------------------------------------------


def test_plaintext_is_not_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "switchboard.db"
    vault = Vault(db, MASTER)
    vault.put("groq", SECRET)
    vault.put("openrouter", OTHER)
    assert SECRET.encode() not in raw_bytes(db)  # while open: the rows may sit in the WAL
    vault.close()
    raw = raw_bytes(db)
    for secret in (SECRET, OTHER):
        assert secret.encode() not in raw
        assert secret[:-4].encode() not in raw  # the label keeps the last 4 and nothing more
    assert MASTER not in raw and MASTER.hex().encode() not in raw
    conn = apsw.Connection(str(db))
    for row in conn.execute("SELECT * FROM vault"):
        assert not any(secret in repr(row) for secret in (SECRET, OTHER))
    conn.close()


def test_nonce_differs_per_secret(tmp_path: Path) -> None:
    db = tmp_path / "switchboard.db"
    vault = Vault(db, MASTER)
    vault.put("groq", SECRET)
    vault.put("groq", OTHER)
    vault.close()
    conn = apsw.Connection(str(db))
    nonces = [bytes(n) for (n,) in conn.execute("SELECT nonce FROM vault")]
    conn.close()
    assert len(nonces) == 2 and len(set(nonces)) == 2
    assert all(len(n) == 12 for n in nonces)


def test_tampered_ciphertext_fails(tmp_path: Path) -> None:
    db = tmp_path / "switchboard.db"
    vault = Vault(db, MASTER)
    key_id, _ = vault.put("groq", SECRET)
    conn = apsw.Connection(str(db))
    (ciphertext,) = conn.execute("SELECT ciphertext FROM vault WHERE key_id = ?", (key_id,)).fetchone()
    flipped = bytes([ciphertext[0] ^ 1]) + bytes(ciphertext[1:])
    conn.execute("UPDATE vault SET ciphertext = ? WHERE key_id = ?", (flipped, key_id))
    conn.close()
    with pytest.raises(SecretsError, match=f"cannot decrypt key {key_id}"):
        vault.get(key_id)
    vault.close()


def test_swapped_key_id_fails(tmp_path: Path) -> None:
    """The key id is the associated data: a ciphertext moved onto another row must not decrypt."""
    db = tmp_path / "switchboard.db"
    vault = Vault(db, MASTER)
    a, _ = vault.put("groq", SECRET)
    b, _ = vault.put("groq", OTHER)
    conn = apsw.Connection(str(db))
    with conn:
        conn.execute("UPDATE vault SET key_id = 'tmp' WHERE key_id = ?", (a,))
        conn.execute("UPDATE vault SET key_id = ? WHERE key_id = ?", (a, b))
        conn.execute("UPDATE vault SET key_id = ? WHERE key_id = 'tmp'", (b,))
    conn.close()
    for key_id in (a, b):
        with pytest.raises(SecretsError, match="cannot decrypt"):
            vault.get(key_id)
    vault.close()


def test_wrong_master_key_fails_clearly(tmp_path: Path) -> None:
    db = tmp_path / "switchboard.db"
    vault = Vault(db, MASTER)
    key_id, _ = vault.put("groq", SECRET)
    vault.close()
    vault = Vault(db, WRONG)
    assert vault.items() == [(key_id, "groq", "…a1b2")]  # listing needs no decryption
    with pytest.raises(SecretsError, match="the master key differs from the one it was stored with") as err:
        vault.get(key_id)
    message = str(err.value)
    assert SECRET not in message and SECRET[-4:] not in message
    assert MASTER.hex() not in message and WRONG.hex() not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    vault.close()


def test_vault_persists_and_leaves_other_tables_alone(tmp_path: Path) -> None:
    db = tmp_path / "switchboard.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE events(seq INTEGER PRIMARY KEY, data BLOB); PRAGMA user_version = 7")
    conn.close()
    vault = Vault(db, MASTER)
    key_id, _ = vault.put("groq", SECRET)
    vault.close()
    vault = Vault(db, MASTER)
    assert vault.get(key_id) == SECRET
    vault.close()
    conn = apsw.Connection(str(db))
    assert conn.execute("PRAGMA user_version").fetchone() == (7,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


# --- tokens -----------------------------------------------------------------------------------------------


def test_hash_and_generate_token() -> None:
    token = generate_token("sk-sb-")
    assert token.startswith("sk-sb-") and len(token) > 40
    assert generate_token("sk-sb-") != token
    digest = hash_token(token)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert token not in digest


def test_token_check() -> None:
    right, other = generate_token("sk-sb-"), generate_token("sk-sb-")
    check = TokenCheck([hash_token(other), hash_token(right)])
    assert check.ok(right) and check.ok(other)
    assert not check.ok(right + "x")
    assert not check.ok(right[:-1])
    assert not check.ok("")
    assert not check.ok(hash_token(right))  # presenting the hash itself is not the token
    assert not TokenCheck([]).ok(right)


def test_token_check_rejects_empty_even_if_its_hash_is_listed() -> None:
    assert not TokenCheck([hash_token("")]).ok("")


def test_normalise_token() -> None:
    digest = hash_token("secret-admin-token")
    assert normalise_token(digest) == digest
    assert normalise_token(digest.upper().replace("SHA256:", "sha256:")) == digest
    assert normalise_token("secret-admin-token") == digest
    assert TokenCheck([normalise_token(digest)]).ok("secret-admin-token")
    with pytest.raises(SecretsError, match="64 hex"):
        normalise_token("sha256:abc")
    with pytest.raises(SecretsError, match="empty"):
        normalise_token("")


# --- credential store -------------------------------------------------------------------------------------


def test_credential_store_ensures_once_and_persists(tmp_path: Path) -> None:
    db = tmp_path / "switchboard.db"
    store = CredentialStore(db)
    gateway = store.ensure("gateway", "sk-sb-")
    admin = store.ensure("admin", "sb-admin-")
    assert gateway is not None and gateway.startswith("sk-sb-")
    assert admin is not None and admin.startswith("sb-admin-")
    assert store.ensure("gateway", "sk-sb-") is None
    store.close()

    store = CredentialStore(db)
    assert store.ensure("gateway", "sk-sb-") is None
    assert store.ensure("admin", "sb-admin-") is None
    assert store.hashes("gateway") == [hash_token(gateway)]
    assert TokenCheck(store.hashes("admin")).ok(admin)
    assert not TokenCheck(store.hashes("admin")).ok(gateway)
    store.close()

    raw = raw_bytes(db)
    for token in (gateway, admin):
        assert token.encode() not in raw
        assert token.removeprefix("sk-sb-").removeprefix("sb-admin-").encode() not in raw


def test_credential_store_add(tmp_path: Path) -> None:
    for store in (CredentialStore(tmp_path / "switchboard.db"), MemoryCredentialStore()):
        digest = hash_token("configured-token")
        store.add("gateway", digest)
        store.add("gateway", digest)  # no duplicate rows
        assert store.hashes("gateway") == [digest]
        assert store.ensure("gateway", "sk-sb-") is None  # a configured key counts: nothing to generate
        with pytest.raises(SecretsError):
            store.add("gateway", "configured-token")  # plaintext where a hash belongs
        with pytest.raises(ValueError, match="kind"):
            store.hashes("root")
        store.close()


def test_memory_credential_store_ensure() -> None:
    store = MemoryCredentialStore()
    token = store.ensure("admin", "sb-admin-")
    assert token is not None
    assert store.ensure("admin", "sb-admin-") is None
    assert store.hashes("admin") == [hash_token(token)]
    assert store.hashes("gateway") == []


@pytest.mark.parametrize("bad", ["up-1\u200b", "sk live", "sk-1\nX-Evil: 1", "clé"])
def test_a_key_that_cannot_travel_in_a_header_is_refused_without_being_quoted(
    bad: str, tmp_path: Path
) -> None:
    # A pasted zero-width space failed every request routed to the key with a 500.
    from service.config import load_config
    from service.server import collect_keys

    with pytest.raises(SecretsError) as caught:
        MemoryVault(MASTER).put("groq", bad)
    assert "cannot receive in a header" in str(caught.value) and bad not in str(caught.value)
    config = load_config(None, {"GROQ_API_KEY": bad})
    with pytest.raises(SecretsError) as at_start:
        collect_keys(config, MASTER, MemoryVault(MASTER))  # type: ignore[arg-type]
    assert "$GROQ_API_KEY" in str(at_start.value) and bad not in str(at_start.value)


def test_a_missing_master_key_is_not_replaced_for_a_data_dir_written_with_it(tmp_path: Path) -> None:
    # From issue 10's list: a deleted master.key was replaced by a new one without a word; stored keys then
    # failed as 500s and config keys got new ids that orphaned their history.
    from service.secrets import KEY_FILE, MasterKeyMismatch, open_vault

    db = tmp_path / "switchboard.db"
    _, vault = open_vault(tmp_path, db, {})
    vault.put("groq", SECRET)
    vault.close()
    original = (tmp_path / KEY_FILE).read_bytes()
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(MasterKeyMismatch, match=r"master\.key is missing, but .* was written with it") as err:
        open_vault(tmp_path, db, {})
    assert "restore it from a backup" in str(err.value)
    assert not (tmp_path / KEY_FILE).exists()  # no new key stands in for the lost one
    (tmp_path / KEY_FILE).write_text(os.urandom(32).hex())
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(MasterKeyMismatch, match="is not the master key"):
        open_vault(tmp_path, db, {})
    with pytest.raises(MasterKeyMismatch, match="SWITCHBOARD_SECRET_KEY is not the master key"):
        open_vault(tmp_path, db, {"SWITCHBOARD_SECRET_KEY": WRONG.hex()})
    (tmp_path / KEY_FILE).write_bytes(original)
    _, vault = open_vault(tmp_path, db, {})  # the original is back: all is well
    assert [p for _, p, _ in vault.items()] == ["groq"]
    vault.close()
