"""Two hub processes with different data directories (two machines, in
effect) sharing one PostgreSQL database and one Redis see the same durable
records: cases, trainings, cameras."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import aiohttp
import psycopg

from hub.workflows.cases import MIGRATIONS as CASES

from .conftest import ROOT, HubProcess, free_port, start_hub
from .recording_helpers import call

VILLAGE = "qutancun"
NEW_CASE = {
    "title": "宅基地边界纠纷",
    "dispute_type": "land",
    "parties": [{"name": "张三", "role": "applicant", "phone": "139 0000 0000"}],
    "summary": "两户因院墙位置发生争执",
}


async def test_two_hubs_on_one_postgresql_share_durable_records(
    tmp_path: Path, postgres_url: str, redis_url: str, http: aiohttp.ClientSession
):
    # The schema first, as an operator would before starting the nodes.
    upgrade = subprocess.run(
        [sys.executable, "-m", "hub", "db", "upgrade", "--database", postgres_url, "--data", str(tmp_path / "cli")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    steps = len(CASES.steps)
    assert upgrade.returncode == 0 and f"cases        version {steps} ({steps} new)" in upgrade.stdout, upgrade.stderr
    # Nodes of one cluster share the token signing key; nothing else of their data directories.
    key = secrets.token_urlsafe(48)
    env = {"HUB_DATABASE": postgres_url, "HUB_CAMERA_NETWORKS": '["127.0.0.1/32"]'}
    hubs: list[HubProcess] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "secret.key").write_text(key)
            hubs.append(start_hub(tmp_path / name, "--redis", redis_url, env=env))
        a, b = hubs
        mediator = a.sign("m-qutan", VILLAGE, "mediator")
        trainer = a.sign("trainer-ledu", "ledu", "trainer")
        operator = a.sign("op-ledu", "ledu", "operator")

        status, case = await call(http, "POST", f"{a.url}/api/cases", mediator, json=NEW_CASE | {"site_id": VILLAGE})
        assert status == 201, case
        status, training = await call(
            http, "POST", f"{a.url}/api/trainings", trainer, json={"title": "调解法规", "branch": "ledu"}
        )
        assert status == 201, training
        camera_body = {"site_id": VILLAGE, "name": "村口", "url": f"rtsp://127.0.0.1:{free_port()}/gate"}
        status, camera = await call(http, "POST", f"{a.url}/api/cameras", operator, json=camera_body)
        assert status == 201, camera

        # The other node reads them, and its change is what the first one then reads.
        status, seen = await call(http, "GET", f"{b.url}/api/cases/{case['id']}", mediator)
        assert status == 200 and seen["title"] == NEW_CASE["title"] and seen["parties"] == NEW_CASE["parties"]
        status, changed = await call(
            http, "PATCH", f"{b.url}/api/cases/{case['id']}", mediator, json={"status": "mediating"}
        )
        assert status == 200, changed
        status, seen = await call(http, "GET", f"{a.url}/api/cases/{case['id']}", mediator)
        assert seen["status"] == "mediating" and [h["action"] for h in seen["history"]][0] == "opened"
        assert len(seen["history"]) == 2
        status, trainings = await call(http, "GET", f"{b.url}/api/trainings", trainer)
        assert status == 200 and training["room_id"] in [t["room_id"] for t in trainings]
        status, cameras = await call(http, "GET", f"{b.url}/api/cameras", operator)
        assert status == 200 and [c["id"] for c in cameras] == [camera["id"]]

        # The server ends every hub session (a restart, a failover): the statement that finds
        # its connection gone fails (500, unless a background task found it first), the next connects again.
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= 2
        statuses = [(await call(http, "GET", f"{a.url}/api/cases/{case['id']}", mediator))[0] for _ in range(2)]
        assert statuses[-1] == 200 and set(statuses) <= {200, 500}
    finally:
        for hub in hubs:
            hub.stop()
    # Neither node kept a database file of its own.
    assert not any((tmp_path / name / "hub.sqlite3").exists() for name in ("a", "b"))
