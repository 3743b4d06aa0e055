"""Token signing keys: key files, `kid` headers, a rollover on a running hub."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import aiohttp
import jwt
import pytest

from hub.core.tokens import Claims, Key, KeyFile, Keyring, KeyringError, TokenError, issue, verify

from .conftest import run_hub_cli, start_hub

OLD, NEW = "o" * 40, "n" * 40
WHO = Claims(user="op-ledu", site="ledu", role="operator")


def write_keys(path: Path, text: str) -> None:
    """Replace the key file at once, as docs/operate.md tells operators to."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no key"),
        ("# only a comment\n", "no key"),
        ("k1 short\n", ":1: a secret has at least 32"),
        (f"k1 {OLD}\nk1 {NEW}\n", ":2: a second key 'k1'"),
        (f"{OLD}\n{NEW}\n", ":2: a second key without id"),
        (f"k/1 {OLD}\n", ":1: a key id is"),
        (f"k1 {OLD} extra\n", ":1: expected 'ID SECRET'"),
    ],
)
def test_bad_key_files_are_refused_with_their_line(text: str, message: str):
    with pytest.raises(KeyringError, match=message):
        Keyring.parse(text)


def test_the_first_key_signs_with_its_id_and_each_key_verifies_its_own_tokens():
    ring = Keyring.parse(f"# rollover\nk2 {NEW}  # since 1 Dec\nk1 {OLD}\n{'l' * 40}\n")
    assert ring.keys == (Key("k2", NEW), Key("k1", OLD), Key(None, "l" * 40))
    token = issue(ring, WHO)
    assert jwt.get_unverified_header(token)["kid"] == "k2"
    assert verify(ring, token) == WHO
    assert verify(ring, issue(Keyring.parse(f"k1 {OLD}"), WHO)) == WHO
    assert "kid" not in jwt.get_unverified_header(issue("l" * 40, WHO))
    assert verify(ring, issue("l" * 40, WHO)) == WHO  # a token from before key ids
    with pytest.raises(TokenError, match="key 'k3'"):
        verify(ring, issue(Keyring.parse(f"k3 {NEW}"), WHO))
    with pytest.raises(TokenError):  # the right id, the wrong secret
        verify(ring, issue(Keyring.parse(f"k1 {NEW}"), WHO))
    with pytest.raises(TokenError, match="no key without id"):
        verify(Keyring.parse(f"k1 {OLD}"), issue(OLD, WHO))


def test_a_key_file_that_turns_bad_keeps_the_keys_read_before(tmp_path: Path):
    path = tmp_path / "keys"
    with pytest.raises(KeyringError):
        KeyFile(path).current()  # missing from the start: refused
    write_keys(path, f"k1 {OLD}\n")
    keys = KeyFile(path)
    assert keys.current().signing == Key("k1", OLD)
    write_keys(path, "k2 half-writ")
    assert keys.current().signing == Key("k1", OLD)
    path.unlink()
    assert keys.current().signing == Key("k1", OLD)
    write_keys(path, f"k2 {NEW}\nk1 {OLD}\n")
    assert keys.current().signing == Key("k2", NEW)


async def me(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(f"{url}/api/me", headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status == 401:
            assert r.content_type == "application/problem+json"
            assert (await r.json())["status"] == 401
        return r.status


async def test_a_rollover_on_a_running_hub(tmp_path: Path, http: aiohttp.ClientSession):
    """From the data directory's secret.key to a key file, then from key k1
    to k2, without restarting: old tokens work while their key is listed,
    and are refused with 401 once it is gone."""
    data = tmp_path / "data"
    legacy = run_hub_cli(data, "token", "--user", "op-ledu", "--site", "ledu", "--role", "operator").strip()
    keys = tmp_path / "keys"
    write_keys(keys, f"k1 {OLD}\n{(data / 'secret.key').read_text().strip()}\n")
    hub = start_hub(data, env={"HUB_SECRET_FILE": str(keys)})
    try:
        # The operator link and the CLI sign with the first key.
        link = (data / "operator-link.txt").read_text().strip()
        operator = link.partition("?token=")[2]
        assert jwt.get_unverified_header(operator)["kid"] == "k1"
        from_cli = run_hub_cli(
            data, "token", "--user", "m", "--site", "ledu", "--role", "mediator", "--secret-file", str(keys)
        ).strip()
        assert jwt.get_unverified_header(from_cli)["kid"] == "k1"
        for token in (legacy, operator, from_cli):
            assert await me(http, hub.url, token) == 200

        write_keys(keys, f"k2 {NEW}\nk1 {OLD}\n")
        k2 = issue(KeyFile(keys), WHO)
        assert jwt.get_unverified_header(k2)["kid"] == "k2"
        assert [await me(http, hub.url, t) for t in (k2, operator, legacy)] == [200, 200, 401]

        write_keys(keys, f"k2 {NEW}\n")
        assert [await me(http, hub.url, t) for t in (k2, operator, from_cli)] == [200, 401, 401]

        write_keys(keys, "k3 not-a-whole-secret")  # a bad edit locks nobody out
        assert await me(http, hub.url, k2) == 200
    finally:
        hub.stop()


def test_commands_refuse_a_key_file_they_cannot_use(tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text("k1 short\n")
    for command in (["token", "--user", "u", "--site", "ledu", "--role", "operator"], ["serve", "--port", "9"]):
        with pytest.raises(subprocess.CalledProcessError) as failed:
            run_hub_cli(tmp_path, *command, "--secret-file", str(keys))
        assert failed.value.returncode == 2
        assert f"{keys}:1: a secret has at least 32 characters" in failed.value.stderr
