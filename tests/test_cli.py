"""The command line doors operators' scripts depend on, and the deployment file."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

from hub.config import DEMO_SITES
from hub.core.sites import LEVELS, SiteTree, SiteTreeError, load_sites_file, sites_from_json
from hub.core.tokens import Claims, TokenError, issue, verify

from .conftest import LOOPBACK_ONLY, ROOT, free_port, run_hub_cli, start_hub

SECRET = "a-test-signing-secret-of-forty-eight-characters!!"


def test_sites_json_and_token(tmp_path: Path):
    sites = json.loads(run_hub_cli(tmp_path, "sites", "--json"))
    assert all(set(s) - {"departments"} == {"id", "name", "level", "parent"} for s in sites)
    ids = {s["id"] for s in sites}
    # The places the seed article names are in the demo tree.
    assert {
        "qinghai",
        "chengdong",
        "chengzhong",
        "guinan",
        "guomaying",
        "rianxiuma",
        "golmud",
        "minkang",
        "chenduo",
        "qingshuihe",
        "ledu",
        "chengtai",
        "taizi",
        "qutan",
        "delingha",
        "huochezhan",
    } <= ids
    assert {s["level"] for s in sites} == set(LEVELS)

    out = run_hub_cli(tmp_path, "token", "--user", "li", "--site", "guinan", "--role", "operator", "--ttl", "60")
    assert out.count("\n") == 1
    claims = verify((tmp_path / "secret.key").read_text().strip(), out.strip())
    assert claims == Claims(user="li", site="guinan", role="operator")
    # Departments come with the tree; a department user's home is its department.
    beside = {d["id"]: s["id"] for s in sites for d in s.get("departments", ())}
    assert beside["guinan-court"] == "guinan" and beside["guomaying-police"] == "guomaying"
    out = run_hub_cli(tmp_path, "token", "--user", "wang", "--department", "guomaying-police", "--role", "mediator")
    claims = verify((tmp_path / "secret.key").read_text().strip(), out.strip())
    assert claims == Claims(user="wang", site="guomaying-police", role="mediator", department="guomaying-police")
    # The secret is generated once and kept.
    again = run_hub_cli(tmp_path, "token", "--user", "li", "--site", "guinan", "--role", "operator")
    verify((tmp_path / "secret.key").read_text().strip(), again.strip())


@pytest.mark.parametrize(
    "args",
    [
        ["--site", "atlantis", "--role", "operator"],
        ["--site", "guinan", "--role", "guest"],  # a guest needs a room
        ["--site", "guinan", "--role", "operator", "--room", "site-golmud"],  # outside its jurisdiction
    ],
)
def test_token_refuses_bad_requests(tmp_path: Path, args: list[str]):
    result = subprocess.run(
        [sys.executable, "-m", "hub", "token", "--user", "x", *args, "--data", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.startswith("error:")


def test_jurisdiction_is_a_site_and_everything_below():
    tree = load_sites_file(DEMO_SITES)
    assert tree.covers("guinan", "rianxiuma")
    assert tree.covers("guinan", "guinan")
    assert not tree.covers("guinan", "hainan")  # above
    assert not tree.covers("guinan", "golmud")  # beside
    assert [s.id for s in tree.jurisdiction("guomaying")] == ["guomaying", "rianxiuma", "shangzhai"]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            [
                {"id": "a", "name": "A", "level": "province", "parent": None},
                {"id": "b", "name": "B", "level": "county", "parent": "missing"},
            ],
            "listed before",
        ),
        (
            [
                {"id": "a", "name": "A", "level": "county", "parent": None},
                {"id": "b", "name": "B", "level": "prefecture", "parent": "a"},
            ],
            "cannot sit below",
        ),
        ([{"id": "a b", "name": "A", "level": "province", "parent": None}], "ASCII"),
        ([{"id": "a", "name": "A", "level": "kingdom", "parent": None}], "level"),
        (
            [
                {"id": "a", "name": "A", "level": "province", "parent": None},
                {"id": "b", "name": "B", "level": "province", "parent": None},
            ],
            "one root",
        ),
        ([{"id": "a", "level": "province"}], "needs id, name"),
    ],
)
def test_bad_site_files_are_refused(items: list[dict], message: str):
    with pytest.raises(SiteTreeError, match=message):
        SiteTree(sites_from_json(items))


def test_tokens_are_checked():
    token = issue(SECRET, Claims(user="u", site="guinan", role="mediator"))
    assert verify(SECRET, token).site == "guinan"
    with pytest.raises(TokenError):
        verify(SECRET[::-1], token)
    with pytest.raises(TokenError, match="expired"):
        verify(SECRET, issue(SECRET, Claims(user="u", site="guinan", role="mediator"), ttl=-1))
    forged = jwt.encode({"sub": "u", "site": "qinghai", "role": "operator", "exp": 2**33}, SECRET, algorithm="HS384")
    with pytest.raises(TokenError):
        verify(SECRET, forged)
    with pytest.raises(ValueError):
        issue(SECRET, Claims(user="u", site="guinan", role="guest"))


def test_docker_compose_file_is_valid():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (scripts/test.sh installs it)")
    compose = [binary, "-f", str(ROOT / "docker-compose.yml"), "config"]
    result = subprocess.run([*compose, "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([*compose, "--services"], capture_output=True, text=True, timeout=60, check=True)
    assert set(services.stdout.split()) == {"proxy", "hub", "redis", "postgres", "coturn"}
    resolved = subprocess.run(compose, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "--workers" in resolved and "deploy/nginx.conf" in resolved
    # The proxy passes the event WebSocket's upgrade on to the workers' one port.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_set_header Connection $connection_upgrade;" in nginx
    assert "server 127.0.0.1:8080;" in nginx


LINK = re.compile(r"http://127\.0\.0\.1:\d+/\?token=[\w.-]+")


def test_serve_writes_the_operator_link_to_a_private_file_when_not_on_a_terminal(tmp_path: Path):
    hub = start_hub(tmp_path)  # its output goes to a log file
    try:
        output = hub.log.read_text()
        link_file = tmp_path / "operator-link.txt"
        assert "token=" not in output, output
        assert f"Operator link (valid 12 h) in {link_file.resolve()}" in output
        assert stat.S_IMODE(link_file.stat().st_mode) == 0o600
        link = link_file.read_text().strip()
        assert LINK.fullmatch(link) and link.startswith(hub.url), link
        token = link.split("token=", 1)[1]
        claims = verify((tmp_path / "secret.key").read_text().strip(), token)
        assert (claims.user, claims.role, claims.site) == ("duty-operator", "operator", "qinghai")
        request = urllib.request.Request(f"{hub.url}/api/me", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # raises unless 2xx
            assert json.load(response)["role"] == "operator"
    finally:
        hub.stop()
    assert token not in hub.log.read_text()


def test_serve_prints_the_operator_link_on_a_terminal(tmp_path: Path):
    port = free_port()
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--port", str(port), "--data", str(tmp_path)],
        cwd=ROOT,
        env=os.environ | {"HUB_ICE_ADDRESSES": LOOPBACK_ONLY},
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while not LINK.search(shown.decode(errors="replace")) and time.monotonic() < deadline:
            if select.select([controller], [], [], 1)[0]:
                shown += os.read(controller, 4096)
    finally:
        proc.terminate()
        proc.wait(20)
        os.close(controller)
    text = shown.decode(errors="replace")
    assert f"Hub ready on http://127.0.0.1:{port}" in text and "Operator link (valid 12 h):" in text, text
    assert LINK.search(text), text
    assert not (tmp_path / "operator-link.txt").exists()
