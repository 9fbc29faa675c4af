"""The gateway's OpenAPI document, fuzzed against the running gateway (issue 16: no 500, every
answer as documented).

schemathesis reads ``/openapi.json`` and sends each operation generated requests: valid ones
(positive) and ones that break the schema (negative).  Each answer must not be a 5xx and must have
a documented status, a documented content type and a body valid against that status's schema.
Two gateways on ``tests/test_api.py``'s worker, broker and Redis answer: that module's ``scanstream
api`` process (its deadline is long, so valid scans get their outcome, 200) and, for the routes
that publish, one of its threaded gateways with a 1 ms deadline (so every valid scan takes the 202
path).  Derandomized and bounded, so CI sees the same cases every run.

The cases come from ``APIOperation.as_strategy`` under hypothesis' own ``@given``, not from
schemathesis' pytest plugin (``schemathesis.pytest.from_fixture``): the plugin reads a private
attribute pytest 9 removed (``Item._nodeid``) and fails before the first case.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from scanstream.api.app import create_app
from scanstream.engine.config import load
from test_api import Gateway, pytestmark, services, winners
from test_worker import LOCAL_TOML

__all__ = ["pytestmark", "services", "winners"]  # test_api's skip mark and the fixtures it starts the services with
#: Generated cases per operation, mode and gateway: the whole module takes well under a minute.
EXAMPLES = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
_DOC = create_app(load(LOCAL_TOML)).openapi()
#: Every operation of the document, known at collection (the served document must have the same).
OPERATIONS = sorted(f"{method.upper()} {path}" for path, item in _DOC["paths"].items() for method in item)
#: Those that publish (with a request body): only they have a deadline, and only their bodies can
#: break the schema (a path's scan_id is any string), so only they get negative cases.
PUBLISHING = [op for op in OPERATIONS if "requestBody" in _DOC["paths"][op.split(" ", 1)[1]][op.split(" ", 1)[0].lower()]]
#: (operation, mode, gateway): "answering" is test_api's gateway process, "hurried" a 1 ms deadline.
CASES = [(op, mode, gateway) for gateway, ops in (("answering", OPERATIONS), ("hurried", PUBLISHING))
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) for op in ops
         if mode is GenerationMode.POSITIVE or op in PUBLISHING]


def _schema(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    assert sorted(r.ok().label for r in schema.get_all_operations()) == OPERATIONS
    return schema


@pytest.fixture(scope="module")
def gateways(services):
    """name -> the OpenAPI document as that gateway serves it (requests go to the same gateway)."""
    url, path = services
    config = load(path)
    with Gateway(replace(config, api=replace(config.api, deadline_ms=1))) as hurried:
        yield {"answering": _schema(url), "hurried": _schema(hurried.url)}


# the single Redis only: the fuzz is of the gateway's HTTP surface, which test_api runs on both
@pytest.mark.parametrize("services", ["redis"], indirect=True)
@pytest.mark.parametrize(("operation", "mode", "gateway"), CASES,
                         ids=[f"{op} {mode.value} {gateway}" for op, mode, gateway in CASES])
def test_every_operation_answers_as_documented(gateways, operation, mode, gateway):
    method, path = operation.split(" ", 1)

    @given(case=gateways[gateway][path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def fuzz(case):
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()
