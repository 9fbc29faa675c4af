"""Fault tests: real workers killed, raced, starved of Redis and ClickHouse, fed garbage.

``tests/faults/harness.py`` is the reusable part (and ``python -m tests.faults.harness`` runs
the long form); ``SCANSTREAM_FAULTS=long`` makes the tests use the long scale.
"""
