"""The one-file export draws a participant's Chinese name, the site's name and
the session's start time: found in the decoded MP4 by matching a reference
rendering made here with Pillow and the same font, and missing from the same
export with those texts blanked."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from recorder.export import PLATE, ExportJob, Exports, find_font, font_px, load_font, missing_glyphs

from .conftest import HubProcess
from .recording_helpers import Recorded, auth, record

NAME = "调解员张三"
SITE = "日安秀麻村"  # the site of recording_helpers.ROOM
FRAME = 20  # 15 fps: 1.3 s into the export, inside its 4 s


@pytest.fixture(scope="module")
def recorded(hub: HubProcess) -> Iterator[Recorded]:
    yield asyncio.run(record(hub, 4, name=NAME))


def reference(text: str) -> np.ndarray:
    """`text` as the export should show it, white on its plate grey, cropped
    to the ink with a plate margin: drawn here with the export's font face,
    not by the export's drawing code."""
    font = load_font(find_font(), font_px(240))
    left, top, right, bottom = font.getbbox(text)
    margin = 2
    img = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), PLATE)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, font=font, fill=255)
    return np.asarray(img)


def mismatch(picture: np.ndarray, text: str) -> float:
    """Mean squared grey difference between `text` and its best-fitting place
    in a picture. Measured: 28-38 where the text is (H.264's loss), 330-570
    for a text one character or digit off, over 1,000 for those used below."""
    template = reference(text).astype(np.float32)
    return float(cv2.matchTemplate(picture.astype(np.float32), template, cv2.TM_SQDIFF).min() / template.size)


def grey_frame(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n == index:
                return frame.to_ndarray(format="gray")
    raise AssertionError(f"{path} has fewer than {index + 1} frames")


def export_in_process(folder: Path, font: Path | None = None) -> ExportJob:
    job = ExportJob(folder, font)
    job.start()
    deadline = time.monotonic() + 120
    while job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    return job


def copy_with(recorded: Recorded, target: Path, name: str | None = None, **changes: Any) -> Path:
    """A copy of the recording, unexported, with `changes` to its manifest and
    `name` for every stream."""
    shutil.copytree(recorded.folder, target)
    manifest = json.loads((target / "manifest.json").read_text()) | changes
    for stream in manifest["streams"]:
        stream["name"] = stream["name"] if name is None else name
    (target / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    (target / "export.mp4").unlink(missing_ok=True)
    return target


async def test_export_draws_the_chinese_name_site_and_start_time(
    hub: HubProcess, recorded: Recorded, http: aiohttp.ClientSession, tmp_path: Path
):
    url = f"{hub.url}/api/recordings/{recorded.id}/export"
    async with http.post(url, headers=auth(recorded.token)) as r:
        assert r.status == 202, await r.text()
    job: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal job
        async with http.get(url, headers=auth(recorded.token)) as r:
            job = await r.json()
        return job["state"] != "running"

    for _ in range(600):
        if await finished():
            break
        await asyncio.sleep(0.2)
    assert job["state"] == "done", job
    async with http.get(f"{url}/file", headers=auth(recorded.token)) as r:
        assert r.status == 200
        (tmp_path / "named.mp4").write_bytes(await r.read())
    named = grey_frame(tmp_path / "named.mp4", FRAME)

    # The same session with the name, site and title blanked and the start an hour,
    # a minute and a second later: every drawn text differs, the pictures not.
    started_at = recorded.manifest["started_at"]
    control_folder = copy_with(
        recorded, tmp_path / "control", name=" ", site_name=" ", title="", started_at=started_at + 3661
    )
    assert export_in_process(control_folder).state == "done"
    control = grey_frame(control_folder / "export.mp4", FRAME)

    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at))
    wrong_start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at + 3661))
    bottom, top = named.shape[0] * 3 // 4, named.shape[0] // 3
    for text, wrong, region in [
        (NAME, "调解员李四", np.s_[bottom:]),
        (SITE, "胜利路社区", np.s_[:top]),
        (start, wrong_start, np.s_[:top]),
    ]:
        assert mismatch(named[region], text) < 100, text
        # Another name, site or time does not fit ...
        assert mismatch(named[region], wrong) > 400, (text, wrong)
        # ... and where the text was blanked, it is not there.
        assert mismatch(control[region], text) > 400, text
    assert mismatch(control[:top], wrong_start) < 100


def test_export_without_its_font_fails_clearly_and_writes_nothing(
    recorded: Recorded, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="recorder.export"):
        Exports(tmp_path / "no-such-font.ttc")  # as the hub starts
    assert "exports will fail: HUB_EXPORT_FONT=" in caplog.text
    folder = copy_with(recorded, tmp_path / "copy")
    job = export_in_process(folder, font=tmp_path / "no-such-font.ttc")
    assert job.state == "failed"
    assert "HUB_EXPORT_FONT" in job.error and "no-such-font.ttc" in job.error
    assert not list(folder.glob("export*.mp4"))


def test_glyphs_the_font_lacks_are_named():
    font = load_font(find_font(), 16)
    # WenQuanYi and Noto CJK have Chinese, not Tibetan script (names in Qinghai may be written in it).
    assert missing_glyphs(font, f"{NAME} {SITE} 2026-12-01") == ""
    assert missing_glyphs(font, "调解员བཀ") == "བཀ"


def test_a_collection_is_drawn_with_its_simplified_chinese_face():
    # Noto Sans CJK's first face is the Japanese one, whose forms of some
    # characters differ from those a Chinese reader expects.
    font = load_font(Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"), 16)
    assert font.getname()[0] == "Noto Sans CJK SC"
