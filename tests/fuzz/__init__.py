"""Fuzz targets: hypothesis properties over every parser the hub owns or
relies on, run briefly by the tests (profile "ci") and at length by
bench/fuzz.py (profile "long").

A target is a hypothesis-decorated function whose first argument is a
context (None for the in-process parsers, a `live.LiveHub` for the ones
against a hub process). A failure is either a crash (an exception the
parser's contract does not allow, or a 5xx) or a `StateChanged` (a refused
input that changed what the hub lists).
"""
