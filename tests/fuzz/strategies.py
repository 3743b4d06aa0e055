"""Input strategies the targets share: JSON of any shape, and mutations of valid input."""

from __future__ import annotations

import functools

from hypothesis import strategies as st


@functools.cache  # one strategy object: building it anew inside every draw is slow
def json_values() -> st.SearchStrategy[object]:
    """Any JSON value, nested a little, with the numbers parsers trip on."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["", " ", "0", "-1", "null", "true", "../..", "site-guinan", "\u0000", "a" * 300]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )


@st.composite
def _mutate_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "truncate":
            del out[draw(st.integers(0, len(out))) :]
            continue
        at = draw(st.integers(0, len(out)))
        if action == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif at < len(out):
            if action == "flip":
                out[at] ^= 1 << draw(st.integers(0, 7))
            elif action == "set":
                out[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
            else:
                del out[at : at + draw(st.integers(1, 8))]
    return bytes(out)


def mutated_bytes(valid: st.SearchStrategy[bytes], max_size: int = 1500) -> st.SearchStrategy[bytes]:
    """Valid input, valid input with a few bytes flipped, set, inserted or cut, or any bytes."""
    return st.one_of(valid, valid.flatmap(_mutate_bytes), st.binary(max_size=max_size))


def mutated_text(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Like mutated_bytes for text: the mutations keep it valid UTF-8 (as a WebSocket text frame)."""
    return mutated_bytes(valid.map(str.encode), max_size=200).map(lambda b: b.decode("utf-8", "replace"))
