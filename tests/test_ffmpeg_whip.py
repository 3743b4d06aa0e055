"""A WHIP client nobody here wrote: FFmpeg's own muxer, bundled in PyAV."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import bot

from .conftest import ROOT, HubProcess


def ecdsa_certificate(directory: Path) -> tuple[Path, Path]:
    """FFmpeg's self-made DTLS certificate is refused by aiortc's OpenSSL;
    an ECDSA P-256 one passed through cert_file/key_file is accepted."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg-whip")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "whip.crt", directory / "whip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_ffmpeg_whip_muxer_publishes_h264_and_opus(hub: HubProcess, http: aiohttp.ClientSession, tmp_path: Path):
    token = hub.token("encoder-1", "xinhua", "terminal")
    cert, key = ecdsa_certificate(tmp_path)
    publisher = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "ffmpeg_whip.py"),
            f"{hub.url}/whip/site-xinhua",
            token,
            "8",
            str(cert),
            str(key),
        ],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stream = None
        for _ in range(100):
            async with http.get(f"{hub.url}/api/rooms/site-xinhua", headers=bot._auth(token)) as r:
                streams = (await r.json())["streams"]
            if streams:
                stream = streams[0]
                break
            assert publisher.poll() is None, publisher.stderr.read() if publisher.stderr else ""
            await asyncio.sleep(0.1)
        assert stream is not None
        assert stream["codecs"] == {"video": "video/H264", "audio": "audio/opus"}
        viewer = await bot.view(http, hub.url, token, stream["id"])
        await asyncio.sleep(3)
        await viewer.close()
    finally:
        publisher.wait(30)
    video, audio = viewer.logs["video"], viewer.logs["audio"]
    assert video.mime_type == "video/H264" and audio.mime_type == "audio/opus"
    assert video.first_keyframe_at is not None
    assert len(video.frames) >= 60  # 3 s at 30 fps, less the wait for a keyframe
    assert len(audio.frames) >= 100
    assert publisher.returncode == 0
