"""Property tests on the secret and key text the gateway is handed (service/secrets.py, the redaction of
service/upstream.py, the bearer check of service/edge.py): provider keys, the master key from the
environment, configured tokens and presented ones. Bad text is a `SecretsError` whose one line never
contains the secret; good text round-trips (a configured token lets exactly itself in); redaction leaves
no recognisable piece of a key behind."""

from __future__ import annotations

import base64
from pathlib import Path

from fuzz_strategies import FUZZ, assert_message
from hypothesis import assume, example, given
from hypothesis import strategies as st

from service.edge import authorized
from service.secrets import (
    ENV_VAR,
    SecretsError,
    TokenCheck,
    check_key_text,
    hash_token,
    key_id_for,
    key_label,
    load_master_key,
    normalise_token,
)
from service.upstream import REDACT_PIECE, redact

MASTER = bytes(range(32))
LIMIT = 300

# Keys as people paste them: mostly visible ASCII, sometimes a space, a line break, a zero-width space,
# a non-ASCII letter, or bytes the environment could not decode (lone surrogates).
key_texts = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    st.text(min_size=1, max_size=40),
    st.builds(
        lambda a, bad, b: a + bad + b,
        st.text(alphabet="abcdef0123456789-_", max_size=20),
        st.sampled_from([" ", "\n", "\r\n", "\t", "\u200b", "é", "\udcff", "\x00", "\x7f"]),
        st.text(alphabet="abcdef0123456789-_", max_size=20),
    ),
)
platforms = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)


@FUZZ
@given(platform=platforms, secret=key_texts)
def test_a_key_is_accepted_exactly_when_it_is_visible_ascii_and_a_refusal_never_shows_it(
    platform: str, secret: str
) -> None:
    visible = all("!" <= c <= "~" for c in secret)
    try:
        check_key_text(platform, secret, "the key given")
    except SecretsError as exc:
        assert not visible
        message = str(exc)
        assert_message(message, LIMIT)
        # (the platform's name is in the wording, and may look like the key)
        assert len(secret) < 6 or secret not in message.replace(f"platform {platform}", "")
        return
    assert visible
    key_id = key_id_for(MASTER, platform, secret)  # what an accepted key is known by
    assert key_id.startswith(platform + ".")
    assert len(secret) < 12 or secret not in key_id.removeprefix(platform)
    label = key_label(secret)
    assert label in ("…", "…" + secret[-4:])


master_key_texts = st.one_of(
    st.text(max_size=70),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(min_size=30, max_size=34).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=32, max_size=32).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.binary(max_size=8).map(lambda b: b.decode("utf-8", "surrogateescape")),
)


@FUZZ
@given(value=master_key_texts)
@example(value="\udcff" * 43)  # undecodable bytes from the environment
def test_a_master_key_from_the_environment_is_32_bytes_or_one_line_that_never_shows_it(value: str) -> None:
    assume(value.strip())  # a blank value counts as unset: the data dir's key file is another matter
    try:
        key = load_master_key(Path("/nonexistent"), {ENV_VAR: value})
    except SecretsError as exc:
        message = str(exc)
        assert_message(message, LIMIT)
        assert len(value.strip()) < 6 or value.strip() not in message
        return
    assert len(key) == 32


tokens = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=68).map(lambda h: "sha256:" + h),
    st.sampled_from(["sha256:", "SHA256:" + "A" * 64, "sha256:" + "g" * 64]),
)


@FUZZ
@given(configured=tokens, presented=st.text(max_size=40))
def test_a_configured_token_lets_in_exactly_itself(configured: str, presented: str) -> None:
    assume("\x00" not in configured)
    try:
        stored = normalise_token(configured)
    except SecretsError as exc:
        assert_message(str(exc), LIMIT)
        assert len(configured) < 12 or configured not in str(exc)  # ("sha256:" is in the wording)
        return
    assert stored.startswith("sha256:") and len(stored) == 71 and stored == stored.lower()
    check = TokenCheck([stored])
    if not configured.lower().startswith("sha256:"):
        assert check.ok(configured)  # a plaintext token is its own key
    assert check.ok(presented) == (presented != "" and hash_token(presented) == stored)


@FUZZ
@given(
    header=st.binary(max_size=60).map(lambda b: b.decode("latin-1")), token=st.text(min_size=1, max_size=20)
)
@example(header="Bearer  sk-x ", token="sk-x")
@example(header="bearer\tsk-x", token="sk-x")
def test_any_authorization_header_is_checked_without_an_error(header: str, token: str) -> None:
    allowed = authorized(TokenCheck([hash_token(token)]), header)
    assert isinstance(allowed, bool)
    if allowed:
        assert header.split(" ", 1)[0].lower() == "bearer"


secret_keys = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", max_size=48
)


@FUZZ
@given(
    secret=secret_keys,
    parts=st.lists(st.one_of(st.text(max_size=12), st.just("SECRET"), st.integers(0, 60)), max_size=8),
)
def test_redaction_leaves_no_piece_of_the_key(secret: str, parts: list[str | int]) -> None:
    # Text that quotes the key whole, in part (from any offset) and around anything else.
    text = "".join(
        secret if p == "SECRET" else secret[p : p + REDACT_PIECE + 3] if isinstance(p, int) else p
        for p in parts
    )
    out = redact(secret, text)
    if len(secret) >= REDACT_PIECE:
        pieces = {secret[i : i + REDACT_PIECE] for i in range(len(secret) - REDACT_PIECE + 1)}
        assert not any(piece in out for piece in pieces), out
    elif secret:  # too short to hunt for pieces: hidden where it stands as a word of its own
        assert secret not in redact(secret, f"key {secret} refused").split()
