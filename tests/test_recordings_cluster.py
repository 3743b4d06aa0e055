"""Recordings on many machines: two hub processes with different data
directories (two machines, in effect) sharing PostgreSQL and Redis. A
recording made on one is found, played back with ranges, verified and
exported through the other, which fetches the files from the first with the
cluster credential, checks jurisdiction and writes the audit rows itself."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import av
from yarl import URL

from hub.core.tokens import issue_node

from .conftest import HubProcess, start_hub
from .recording_helpers import auth, record


async def fetch(http: aiohttp.ClientSession, url: str, token: str, **headers: str) -> tuple[int, Any, bytes]:
    async with http.get(url, headers=auth(token) | headers) as r:
        return r.status, r.headers, await r.read()


async def audit_rows(http: aiohttp.ClientSession, hub: HubProcess, operator: str, recording_id: str) -> list[dict]:
    async with http.get(f"{hub.url}/api/audit", params={"recording": recording_id}, headers=auth(operator)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def test_a_recording_made_on_one_machine_is_served_by_another(
    tmp_path: Path, postgres_url: str, redis_url: str, http: aiohttp.ClientSession
):
    key, cluster_secret = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    env = {"HUB_DATABASE": postgres_url, "HUB_CLUSTER_SECRET": cluster_secret}
    hubs: list[HubProcess] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "secret.key").write_text(key)
            hubs.append(start_hub(tmp_path / name, "--redis", redis_url, env=env))
        a, b = hubs
        recorded = await record(a, 2.0)
        assert not (b.data / "recordings" / recorded.id).exists()  # B holds none of A's files
        operator = a.sign("op-guinan", "guinan", "operator")

        async with http.get(f"{b.url}/api/recordings", params={"site": "guomaying"}, headers=auth(operator)) as r:
            found = {row["id"]: row for row in await r.json()}
        assert found[recorded.id]["node_url"] == a.url
        status, _, body = await fetch(http, f"{b.url}/api/recordings/{recorded.id}", recorded.token)
        assert status == 200 and b'"streams"' in body

        seg = recorded.manifest["streams"][0]["segments"][0]["path"]
        data = (recorded.folder / seg).read_bytes()
        url = f"{b.url}/api/recordings/{recorded.id}/files/{seg}"
        status, headers, body = await fetch(http, url, recorded.token)
        assert status == 200 and body == data and headers["Content-Type"] == "video/webm"
        (tmp_path / "through-b.webm").write_bytes(body)
        assert decoded_frames(tmp_path / "through-b.webm") > 10
        status, headers, body = await fetch(http, url, recorded.token, Range="bytes=100-1099")
        assert status == 206 and body == data[100:1100]
        assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
        status, headers, _ = await fetch(http, url, recorded.token, Range=f"bytes={len(data) + 10}-")
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"

        # One playback row, written by B for the user; A answered a node and wrote none.
        plays = [r for r in await audit_rows(http, b, operator, recorded.id) if r["action"] == "playback"]
        assert [(p["user"], p["detail"]) for p in plays] == [("mediator-rec", seg)]

        outsider = a.sign("op-golmud", "golmud", "operator")
        for path in ["", f"/files/{seg}", "/verify", "/export"]:
            status, _, _ = await fetch(http, f"{b.url}/api/recordings/{recorded.id}{path}", outsider)
            assert status == 403, path
        status, _, _ = await fetch(http, url, outsider)
        assert status == 403

        status, _, body = await fetch(http, f"{b.url}/api/recordings/{recorded.id}/verify", recorded.token)
        assert status == 200 and b'"intact":true' in body.replace(b" ", b""), body

        export = f"{b.url}/api/recordings/{recorded.id}/export"
        async with http.post(export, headers=auth(recorded.token)) as r:
            assert r.status == 202, await r.text()
        job: dict[str, Any] = {}
        for _ in range(600):
            async with http.get(export, headers=auth(recorded.token)) as r:
                job = await r.json()
            if job["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.2)
        assert job["state"] == "done", job
        status, headers, body = await fetch(http, f"{export}/file", recorded.token)
        assert status == 200 and headers["Content-Type"] == "video/mp4"
        assert body == (recorded.folder / "export.mp4").read_bytes()  # rendered by A, where the files are
        (tmp_path / "export.mp4").write_bytes(body)
        assert decoded_frames(tmp_path / "export.mp4") > 10
        actions = [r["action"] for r in await audit_rows(http, b, operator, recorded.id)]
        assert actions.count("export") == 1 and actions.count("download") == 1 and actions.count("verify") == 1

        # The cluster credential reaches the recording doors only, and only files inside the recording.
        node = issue_node(cluster_secret, "intruder")
        base = f"{a.url}/api/recordings/{recorded.id}/files/"
        for path in ["..%2F..%2Fsecret.key", "%2E%2E/hub-data", "%2Fetc%2Fpasswd"]:
            async with http.get(URL(base + path, encoded=True), headers=auth(node)) as r:
                assert r.status in (400, 404) and r.content_type == "application/problem+json", path
        for path in ["/api/recordings", "/api/audit", "/api/cases", "/api/sites"]:
            status, _, _ = await fetch(http, f"{a.url}{path}", node)
            assert status == 401, path

        # The holder goes away: a clear problem, not a hang or an empty 200.
        a.stop()
        async with http.get(url, headers=auth(recorded.token)) as r:
            problem = await r.json(content_type="application/problem+json")
        assert r.status == 502 and a.url in problem["detail"] and "cannot be reached" in problem["detail"]
    finally:
        for hub in hubs:
            hub.stop()


async def test_a_shared_media_directory_needs_no_fetch(
    tmp_path: Path, postgres_url: str, redis_url: str, http: aiohttp.ClientSession
):
    """With HUB_SHARED_MEDIA every node records into one directory and reads every
    recording there, with no cluster credential; a node that has neither answers 503."""
    key = secrets.token_urlsafe(48)
    shared = tmp_path / "media"
    env = {"HUB_DATABASE": postgres_url}
    hubs: list[HubProcess] = []
    try:
        for name, extra in (
            ("a", {"HUB_SHARED_MEDIA": str(shared)}),
            ("b", {"HUB_SHARED_MEDIA": str(shared)}),
            ("c", {}),
        ):
            (tmp_path / name).mkdir()
            (tmp_path / name / "secret.key").write_text(key)
            hubs.append(start_hub(tmp_path / name, "--redis", redis_url, env=env | extra))
        a, b, c = hubs
        recorded = await record(a, 1.0, folder=shared)
        assert recorded.folder.parent == shared and not (a.data / "recordings" / recorded.id).exists()
        seg = recorded.manifest["streams"][0]["segments"][0]["path"]
        status, headers, body = await fetch(
            http, f"{b.url}/api/recordings/{recorded.id}/files/{seg}", recorded.token, Range="bytes=0-99"
        )
        assert status == 206 and body == (recorded.folder / seg).read_bytes()[:100]
        async with http.get(f"{c.url}/api/recordings/{recorded.id}/files/{seg}", headers=auth(recorded.token)) as r:
            problem = await r.json(content_type="application/problem+json")
        assert r.status == 503 and "HUB_CLUSTER_SECRET" in problem["detail"], problem
    finally:
        for hub in hubs:
            hub.stop()
