"""The built-in dashboard: a local web page with live charts of the ClickHouse tables.

``Dashboard`` (``server.py``) serves the page (``static/``), Plotly's browser bundle from the
installed ``plotly`` package, and ``/api/panel/NAME`` JSON built by ``panels.py``.  The
``scanstream dashboard`` command and the ``--dashboard`` flag of ``run``/``demo``
(``scanstream/cli/dashboard.py``) create it.
"""
from scanstream.dashboard.panels import PANELS, PANELS_BY_NAME
from scanstream.dashboard.server import (
                                    DEFAULT_HOST,
                                    DEFAULT_PORT,
                                    DEFAULT_REFRESH_S,
                                    DEFAULT_TIMEZONE,
                                    Dashboard,
                                    NotReady,
                                    chdb_path_holder,
                                    plotly_js_path,
)

__all__ = [
                                    "DEFAULT_HOST",
                                    "DEFAULT_PORT",
                                    "DEFAULT_REFRESH_S",
                                    "DEFAULT_TIMEZONE",
                                    "PANELS",
                                    "PANELS_BY_NAME",
                                    "Dashboard",
                                    "NotReady",
                                    "chdb_path_holder",
                                    "plotly_js_path",
]
