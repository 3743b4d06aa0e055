"""H.264 Annex B byte streams: NAL units separated by start codes.

Encoders write them with 3- or 4-byte start codes, RTP depayloaders with
4-byte ones; splitting and rejoining puts both in one form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

START_CODE = b"\x00\x00\x00\x01"


def split_nal_units(data: bytes) -> Iterator[bytes]:
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for n, start in enumerate(starts):
        end = len(data) if n + 1 == len(starts) else starts[n + 1] - 3
        nal = data[start:end]
        if n + 1 < len(starts) and nal.endswith(b"\x00"):
            nal = nal[:-1]  # the leading zero of a 4-byte start code
        if nal:
            yield nal


def join_nal_units(nals: Iterable[bytes]) -> bytes:
    return b"".join(START_CODE + nal for nal in nals)
