"""Property-based requests against a live hub, generated from its own API
document by schemathesis: no answer is a 5xx, and every answer (status,
content type, headers, body) is one the document describes.

Bounded: a few examples per operation with a fixed seed (Hypothesis'
`derandomize`), so a run is repeatable and takes about a minute here. The
hub is this module's own, with a real signed operator token at the root of
the tree, so the requests reach past authentication into the handlers.
Nothing is excluded: the WebSocket, WHIP/WHEP (random SDP is a 400), the
pages and the static files are all exercised.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .conftest import HubProcess, start_hub


@schemathesis.serializer("application/sdp")
def sdp_offer(ctx: schemathesis.SerializationContext, value: Any) -> dict[str, Any]:
    """WHIP and WHEP take an SDP offer as text; the generated one is a random string (a 400)."""
    return {"data": str(value).encode("utf-8")}


#: The one check left out: "a schema-valid request is accepted". Some rules
#: are not JSON Schema — a wall pane names exactly one source, `from` comes
#: before `to`, an invited site lies above the room's — and their 400s are
#: answers the document lists; every other check (no 5xx, documented status,
#: content type, headers, response body schema) runs.
EXCLUDED = [positive_data_acceptance]
#: Examples per operation: enough to hit each body's and query's edges
#: (empty, missing, out of range), few enough to stay near a minute.
EXAMPLES = 8


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    # Cameras on loopback only: the registered one points at a port where nothing listens.
    process = start_hub(tmp_path_factory.mktemp("schemathesis"), env={"HUB_CAMERA_NETWORKS": '["127.0.0.1/32"]'})
    yield process
    process.stop()


def known_ids(hub: HubProcess, headers: dict[str, str]) -> dict[str, str]:
    """Ids that exist, so that a second run of each operation reaches past
    its 404 (random ids name nothing) into the success answers."""
    made: dict[str, str] = {"site_id": "xining"}
    for key, path, body in (
        ("room_id", "/api/rooms", {"site_id": "xining", "kind": "mediation", "title": "调解"}),
        ("case_id", "/api/cases", {"title": "邻里", "dispute_type": "neighbour", "parties": [{"name": "张三"}]}),
        ("camera_id", "/api/cameras", {"site_id": "xining", "name": "门口", "url": "rtsp://127.0.0.1:9/cam"}),
    ):
        data = json.dumps(body).encode()
        request = urllib.request.Request(hub.url + path, data, headers | {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:  # a 4xx raises
            made[key] = json.load(answer)["id"]
    return made


@pytest.mark.timeout(300)
def test_every_answer_keeps_to_the_document(fuzz_hub: HubProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_hub.url}/api/openapi.json", timeout=30)
    headers = {"Authorization": f"Bearer {fuzz_hub.sign('op-fuzz', 'qinghai', 'operator')}"}
    failures: list[str] = []
    operations = 0
    ids = known_ids(fuzz_hub, headers)
    runs = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        runs.append((operation, operation.as_strategy()))
        names = [p.name for p in operation.path_parameters]
        if names and all(n in ids for n in names):
            runs.append((operation, operation.as_strategy(path_parameters={n: ids[n] for n in names})))
    for operation, strategy in runs:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=fuzz_hub.url, headers=headers, excluded_checks=EXCLUDED, timeout=30)

        try:
            run()
        # Every operation runs; the failures are told together. Schemathesis
        # reports failed checks as a FailureGroup, a BaseExceptionGroup.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 60
    assert failures == [], "\n\n".join(failures)
