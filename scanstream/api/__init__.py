"""The HTTP scan gateway (``scanstream api``): the scan API's side of scanstream over HTTP.

``models`` is the contract (pydantic models of the scan event and of every answer, from which
``/openapi.json`` is generated); ``app`` checks, publishes and awaits each scan.
"""
