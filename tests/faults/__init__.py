"""Fault tests: real workers killed, raced, starved of Redis and ClickHouse, fed garbage.

The reusable part: ``harness.py`` (the scenarios; ``PYTHONPATH=tests python -m
tests.faults.harness`` runs the long form), made of ``inputs.py`` (tenants, campaigns, registry,
streams), ``processes.py`` (workers, a private Redis, frozen storage), ``topics.py`` (Kafka),
``scenario.py`` (one isolated deployment), ``stores.py`` (reading chdb) and ``checks.py`` (the
promises a run must keep); ``SCANSTREAM_FAULTS=long`` makes the tests use the long scale.
"""
