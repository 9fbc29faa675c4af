"""The panels of the built-in dashboard: one SQL query (or a few) per panel, and a Plotly figure.

Every panel reads the base tables (``scan_events``, ``alerts``, ``awards``, ``registry_*``)
with ``FINAL``, because they are ReplacingMergeTree tables and a redelivered batch may still
sit in an unmerged part (``alert_deliveries`` keeps every record: no ``FINAL``).  Regions and
dealers come with their names, joined in the queries (``queries.py`` says why there).  Each
query is a module constant named ``*_SQL`` (in ``queries.py``) and takes only bound
parameters (``{tenant:Int32}``, ``{tz:String}``, ...), so it can be replaced by a
``SELECT ... FROM <kpi view>`` with the same output columns without touching the figure
code.  The one exception is ``__BUCKET__``: a time interval chosen from a fixed list
(``INTERVAL 1 HOUR``, ...) and pasted in, because an INTERVAL's unit cannot be a parameter.

Definitions (they are shown under each panel too):

* valid scan: verdict ``ok`` or ``repeat`` (the code verified, its batch is registered and
  activated);
* scanner: a ``consumer`` with a user_id and at least one valid scan;
* code: (tenant, kind, batch, serial), so a code given as a URL or in lower case is one code.

The panels stay in one file (some 20 to 50 lines each) because they share the machinery above
them and are read side by side when a definition changes.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scanstream.dashboard.labels import (
    LABEL_LINE_CELLS, city_label, dealer_label, fit_height, place_label, wrap_label,
)
from scanstream.dashboard.queries import (
    OVERVIEW_SQL, OVERVIEW_AWARDS_SQL, OVERVIEW_ALERTS_SQL, SPAN_SQL, SCANS_PER_MINUTE_SQL, VERDICT_MIX_SQL,
    CONVERSION_BATCH_SQL, CONVERSION_SKU_SQL, CONVERSION_PROVINCE_SQL, REPEAT_RATE_SQL, NEW_RETURNING_SQL, SPEND_SQL,
    PRIZES_SQL, FRAUD_SQL, FRAUD_ALERTS_SQL, FRAUD_CONFLICTS_SQL, DIVERSION_DEALER_SQL, DIVERSION_ALERTS_SQL,
    DIVERSION_REGION_SQL, LATEST_ALERTS_SQL, LATEST_ALERTS_LIMIT, GUIDES_SQL, GUIDES_TOTALS_SQL, GUIDES_LIMIT,
    OUTBOUND_SQL, OUTBOUND_TOTALS_SQL, OUTBOUND_LIMIT,
)

#: Fine time buckets of the scans/min panel, in minutes; the smallest that gives at most
#: MAX_FINE_BUCKETS buckets over the window is used.
FINE_BUCKETS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 240, 720, 1440)
MAX_FINE_BUCKETS = 300
#: Coarse buckets of the KPI time series, by the time the data spans: (longest span, SQL interval, label).
COARSE_BUCKETS = (
    (2 * 86_400_000, "INTERVAL 1 HOUR", "hour"),
    (62 * 86_400_000, "INTERVAL 1 DAY", "day"),
    (math.inf, "INTERVAL 1 WEEK", "week"),
)
#: Default and largest window of the scans/min panel, minutes.
DEFAULT_WINDOW_MIN = 24 * 60
MAX_WINDOW_MIN = 366 * 24 * 60

#: Colour per verdict and per diversion kind, so every chart uses the same ones.
VERDICT_COLORS = {
    "ok": "#2ca02c", "repeat": "#1f77b4", "bad_mac": "#d62728", "unknown_batch": "#9467bd",
    "not_activated": "#ff7f0e", "malformed": "#8c564b", "unknown_tenant": "#e377c2", "invalid_event": "#7f7f7f",
    "conflict": "#bcbd22",
}
VERDICT_ORDER = tuple(VERDICT_COLORS)
DIVERSION_COLORS = {"region": "#d62728", "channel": "#ff7f0e", "region+channel": "#9467bd"}

#: An alert's delivery states, in the order the latest-alerts list counts them (the page's CSS
#: colours each: .state-delivered, ...; "not sent": no delivery record).
DELIVERY_STATES = ("delivered", "failed", "pending", "not sent")

# --------------------------------------------------------------------------- panel machinery

Query = Callable[[str, Mapping[str, Any]], tuple[list[str], list[tuple]]]


@dataclass
class Context:
    """What a panel needs to run: the query function and the request's settings."""

    query: Query
    tenant: int = -1
    tz: str = "Asia/Shanghai"
    window_min: int = DEFAULT_WINDOW_MIN
    campaigns: Sequence[Any] = ()  # engine.lottery.Campaign
    throughput: Callable[[], dict] | None = None  # samples of rows written, from the server
    sql_used: list[str] = field(default_factory=list)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {"tenant": self.tenant, "tz": self.tz, **extra}

    def run(self, sql: str, **extra: Any) -> tuple[list[str], list[tuple]]:
        self.sql_used.append(sql.strip())
        return self.query(sql, self.params(**extra))

    def records(self, sql: str, **extra: Any) -> list[dict[str, Any]]:
        names, rows = self.run(sql, **extra)
        return [dict(zip(names, row)) for row in rows]

    def campaigns_in_view(self) -> list[Any]:
        return [c for c in self.campaigns if self.tenant < 0 or c.tenant == self.tenant]


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    note: str  # the definition shown under the chart
    build: Callable[[Context], dict]
    wide: bool = False  # spans two grid columns
    kind: str = "chart"  # "chart", "tiles" or "table"


def _span(ctx: Context) -> tuple[int, int] | None:
    rows = ctx.records(SPAN_SQL)
    first, last = (rows[0]["first_ms"], rows[0]["last_ms"]) if rows else (0, 0)
    if not last:
        return None
    return int(first), int(last)


def _coarse(ctx: Context) -> tuple[str, str]:
    """(SQL interval, label) of the KPI time series for the data's time span."""
    span = _span(ctx)
    width = span[1] - span[0] if span else 0
    for longest, interval, label in COARSE_BUCKETS:
        if width <= longest:
            return interval, label
    return COARSE_BUCKETS[-1][1:]


def _with_bucket(sql: str, interval: str) -> str:
    if interval not in {c[1] for c in COARSE_BUCKETS}:
        raise ValueError(f"bucket {interval!r}: expected one of {[c[1] for c in COARSE_BUCKETS]}")
    return sql.replace("__BUCKET__", interval)


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 3) if whole else None


def _yuan(cents: float) -> float:
    return round(cents / 100.0, 2)


def _time_axis(ctx: Context, label: str = "") -> dict:
    return {"title": {"text": f"{label + ', ' if label else ''}{ctx.tz}"}, "type": "date"}


def _empty_figure(message: str) -> dict:
    return {"data": [], "layout": {
        "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "annotations": [{"text": message, "showarrow": False, "font": {"size": 14, "color": "#888"},
                         "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}],
    }}


def _result(columns: list[str], rows: list[Sequence[Any]], figure: dict | None, kpi: dict | None = None,
            headline: str = "") -> dict:
    """A panel's answer: its rows (for tests and anyone reading the API), the Plotly figure, the
    key figures, and a one-line headline the page shows above the chart."""
    return {"columns": columns, "rows": [list(r) for r in rows], "figure": figure, "kpi": kpi or {},
            "headline": headline}


# --------------------------------------------------------------------------- panels


def overview(ctx: Context) -> dict:
    s = ctx.records(OVERVIEW_SQL)[0]
    a = ctx.records(OVERVIEW_AWARDS_SQL)[0]
    alerts = {r["alert"]: r["alerts"] for r in ctx.records(OVERVIEW_ALERTS_SQL)}
    prizes, cents = int(a["prizes"]), int(a["cents"] or 0)
    commission_cents = int(a["commission_cents"] or 0)
    scanners = int(s["scanners"])
    budget = sum(c.budget_cents for c in ctx.campaigns_in_view())
    kpi = {
        "scans": int(s["scans"]),
        "valid_scans": int(s["valid_scans"]),
        "valid_pct": _pct(s["valid_scans"], s["scans"]),
        "scanners": scanners,
        "codes": int(s["codes"]),
        "counterfeit_scans": int(s["counterfeit_scans"]),
        "diverted_scans": int(s["diverted_scans"]),
        "prizes": prizes,
        "spent_cents": cents,  # prizes and commissions: both are paid from the budgets
        "commissions": int(a["commissions"]),
        "commission_cents": commission_cents,
        "budget_cents": budget,
        "cac_yuan": round(cents / 100.0 / scanners, 2) if scanners else None,
        "alerts": {str(k): int(v) for k, v in alerts.items()},
        "latest_ms": int(s["latest_ms"]) or None,
    }
    tiles = [
        {"label": "scans", "value": f"{kpi['scans']:,}"},
        {"label": "valid", "value": f"{kpi['valid_pct'] or 0:.1f} %", "hint": f"{kpi['valid_scans']:,} ok or repeat"},
        {"label": "scanners", "value": f"{scanners:,}", "hint": "consumers with a valid scan"},
        {"label": "codes scanned", "value": f"{kpi['codes']:,}"},
        {"label": "prizes paid", "value": f"{prizes:,}"},
        {"label": "spend", "value": f"¥{cents / 100:,.0f}",
         "hint": (f"of ¥{budget / 100:,.0f} budget" if budget else "no campaign budget")
                 + (f", ¥{commission_cents / 100:,.0f} commissions" if commission_cents else "")},
        {"label": "cost per scanner", "value": f"¥{kpi['cac_yuan']:,.2f}" if kpi["cac_yuan"] is not None else "–",
         "hint": "spend / scanners (acquisition cost)"},
        {"label": "counterfeit scans", "value": f"{kpi['counterfeit_scans']:,}", "hint": "verdict bad_mac",
         "alarm": kpi["counterfeit_scans"] > 0},
        {"label": "alerts", "value": f"{sum(kpi['alerts'].values()):,}",
         "hint": ", ".join(f"{k} {v:,}" for k, v in kpi["alerts"].items()) or "none",
         "alarm": bool(kpi["alerts"])},
    ]
    return {"columns": list(s), "rows": [list(s.values())], "kpi": kpi, "tiles": tiles, "figure": None,
            "headline": ""}


def scans_per_minute(ctx: Context) -> dict:
    span = _span(ctx)
    if span is None:
        return _result(["minute", "verdict", "scans", "per_min"], [], _empty_figure("no scans yet"))
    until = span[1]
    since = max(span[0], until - ctx.window_min * 60_000)
    minutes = max((until - since) / 60_000, 1)
    bucket = next((b for b in FINE_BUCKETS_MIN if minutes / b <= MAX_FINE_BUCKETS), FINE_BUCKETS_MIN[-1])
    names, rows = ctx.run(SCANS_PER_MINUTE_SQL, bucket_min=bucket, since_ms=since, until_ms=until)
    series: dict[str, tuple[list, list]] = {}
    for minute, verdict, scans in rows:
        xs, ys = series.setdefault(verdict, ([], []))
        xs.append(minute)
        ys.append(round(scans / bucket, 3))
    order = sorted(series, key=lambda v: (VERDICT_ORDER.index(v) if v in VERDICT_ORDER else 99, v))
    data = [{"type": "scatter", "mode": "lines", "stackgroup": "verdicts", "name": v,
             "x": series[v][0], "y": series[v][1], "line": {"width": 0.5, "color": VERDICT_COLORS.get(v)},
             "hovertemplate": "%{x}<br>" + v + ": %{y:.1f} scans/min<extra></extra>"} for v in order]
    latest = rows[-1][0] if rows else ""
    layout = {"xaxis": _time_axis(ctx, "event time"),
              "yaxis": {"title": {"text": f"scans/min ({bucket}-min buckets)" if bucket > 1 else "scans/min"},
                        "rangemode": "tozero"},
              "hovermode": "x unified"}
    kpi = {"bucket_min": bucket, "since_ms": since, "until_ms": until, "latest_bucket": latest}
    last = sum(r[2] for r in rows if r[0] == latest) / bucket
    headline = f"{last:,.1f} scans/min in the latest {bucket}-minute bucket ({latest})" if rows else ""
    return _result(names + ["per_min"], [list(r) + [round(r[2] / bucket, 3)] for r in rows],
                   {"data": data, "layout": layout}, kpi, headline)


def verdict_mix(ctx: Context) -> dict:
    names, rows = ctx.run(VERDICT_MIX_SQL)
    if not rows:
        return _result(names, rows, _empty_figure("no scans yet"))
    labels = [r[0] for r in rows]
    data = [{"type": "pie", "hole": 0.5, "labels": labels, "values": [r[1] for r in rows], "sort": False,
             "marker": {"colors": [VERDICT_COLORS.get(v, "#bbb") for v in labels]},
             "textinfo": "percent", "textposition": "inside", "insidetextorientation": "horizontal",
             "hovertemplate": "%{label}: %{value:,} scans (%{percent})<extra></extra>"}]
    total = sum(r[1] for r in rows)
    counts = dict(rows)
    layout = {"showlegend": True, "legend": {"orientation": "v", "x": 1.0, "xanchor": "left", "y": 0.5,
                                             "yanchor": "middle", "font": {"size": 11}},
              "uniformtext": {"minsize": 9, "mode": "hide"}, "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
              "annotations": [{"text": f"{total:,}<br>scans", "showarrow": False, "font": {"size": 14}}]}
    headline = f"{total:,} scans; ok {_pct(counts.get('ok', 0), total):.1f} %, bad_mac {counts.get('bad_mac', 0):,}"
    return _result(names, rows, {"data": data, "layout": layout}, {"total": total}, headline)


def _conversion_headline(issued: Sequence[int], scanned: Sequence[int]) -> str:
    total_issued, total_scanned = sum(issued), sum(scanned)
    if not total_issued:
        return ""
    return f"{total_scanned:,} of {total_issued:,} codes scanned ({100 * total_scanned / total_issued:.2f} %)"


def _conversion_figure(labels: list[str], issued: list[int], scanned: list[int], axis: str) -> dict:
    rates = [_pct(s, i) or 0.0 for s, i in zip(scanned, issued)]
    data = [{"type": "bar", "x": labels, "y": rates, "marker": {"color": "#1f77b4"},
             "text": [f"{r:.2f} %" for r in rates], "textposition": "outside", "cliponaxis": False,
             "customdata": [[s, i] for s, i in zip(scanned, issued)],
             "hovertemplate": "%{x}<br>%{customdata[0]:,} of %{customdata[1]:,} codes scanned"
                              "<br>%{y:.3f} %<extra></extra>"}]
    layout = {"xaxis": {"title": {"text": axis}, "type": "category", "tickangle": 0},
              "yaxis": {"title": {"text": "scanned / issued, %"}, "rangemode": "tozero"}}
    return {"data": data, "layout": layout}


def conversion_batch(ctx: Context) -> dict:
    names, rows = ctx.run(CONVERSION_BATCH_SQL)
    names = names + ["rate_pct"]
    rows = [list(r) + [_pct(r[7], r[6])] for r in rows]
    if not rows:
        return _result(names, rows, _empty_figure("no batches in the registry"))
    labels = [f"{r[1]}<br>{r[3]}{'' if r[2] == 'unit' else '<br>(case)'}{'' if r[5] else '<br>(inactive)'}" for r in rows]
    issued, scanned = [r[6] for r in rows], [r[7] for r in rows]
    return _result(names, rows, _conversion_figure(labels, issued, scanned, "batch"),
                   headline=_conversion_headline(issued, scanned))


def conversion_sku(ctx: Context) -> dict:
    names, rows = ctx.run(CONVERSION_SKU_SQL)
    names = names + ["rate_pct"]
    rows = [list(r) + [_pct(r[2], r[1])] for r in rows]
    if not rows:
        return _result(names, rows, _empty_figure("no batches in the registry"))
    issued, scanned = [r[1] for r in rows], [r[2] for r in rows]
    return _result(names, rows, _conversion_figure([r[0] for r in rows], issued, scanned, "sku"),
                   headline=_conversion_headline(issued, scanned))


def conversion_province(ctx: Context) -> dict:
    names, rows = ctx.run(CONVERSION_PROVINCE_SQL)  # province, province_name, issued, scanned
    names = names + ["rate_pct"]
    rows = [list(r) + [_pct(r[3], r[2])] for r in rows]
    if not rows:
        return _result(names, rows, _empty_figure("no dealers in the registry"))
    issued, scanned = [r[2] for r in rows], [r[3] for r in rows]
    # provinces across: Chinese names are short, and wrap when one is not (广西壮族自治区)
    labels = [wrap_label(place_label(r[0], r[1]), LABEL_LINE_CELLS // 2) for r in rows]
    return _result(names, rows, _conversion_figure(labels, issued, scanned, "province of the dealer shipped to"),
                   headline=_conversion_headline(issued, scanned) + " (shipped codes)")


def repeat_rate(ctx: Context) -> dict:
    interval, label = _coarse(ctx)
    names, rows = ctx.run(_with_bucket(REPEAT_RATE_SQL, interval))
    scanners = repeaters = 0
    xs, rates, cum = [], [], []
    for bucket, first, second in rows:
        scanners += int(first)
        repeaters += int(second)
        xs.append(bucket)
        rates.append(_pct(repeaters, scanners) or 0.0)
        cum.append([scanners, repeaters])
    kpi = {"scanners": scanners, "repeat_scanners": repeaters, "rate_pct": _pct(repeaters, scanners)}
    if not rows:
        return _result(names, rows, _empty_figure("no valid consumer scans yet"), kpi)
    data = [{"type": "scatter", "mode": "lines+markers", "x": xs, "y": rates, "name": "repeat-scan rate",
             "line": {"color": "#1f77b4", "shape": "hv"}, "customdata": cum,
             "hovertemplate": "%{x}<br>%{customdata[1]:,} of %{customdata[0]:,} scanners: %{y:.2f} %<extra></extra>"}]
    layout = {"xaxis": _time_axis(ctx, f"cumulative, by {label}"),
              "yaxis": {"title": {"text": "scanners with > 1 code, %"}, "rangemode": "tozero"}}
    return _result(names, rows, {"data": data, "layout": layout}, kpi,
                   f"{kpi['rate_pct']:.2f} %: {repeaters:,} of {scanners:,} scanners scanned more than one code")


def new_returning(ctx: Context) -> dict:
    interval, label = _coarse(ctx)
    names, rows = ctx.run(_with_bucket(NEW_RETURNING_SQL, interval))
    if not rows:
        return _result(names, rows, _empty_figure("no valid consumer scans yet"))
    xs = [r[0] for r in rows]
    data = [{"type": "bar", "name": "new", "x": xs, "y": [r[1] for r in rows], "marker": {"color": "#2ca02c"}},
            {"type": "bar", "name": "returning", "x": xs, "y": [r[2] for r in rows], "marker": {"color": "#1f77b4"}}]
    layout = {"barmode": "stack", "xaxis": _time_axis(ctx, f"by {label}"),
              "yaxis": {"title": {"text": f"scanners per {label}"}}, "hovermode": "x unified"}
    kpi = {"new": sum(r[1] for r in rows), "returning": sum(r[2] for r in rows), "bucket": label}
    last = rows[-1]
    headline = f"latest {label} ({last[0]}): {last[1]:,} new, {last[2]:,} returning"
    return _result(names, rows, {"data": data, "layout": layout}, kpi, headline)


def spend_budget(ctx: Context) -> dict:
    interval, label = _coarse(ctx)
    names, rows = ctx.run(_with_bucket(SPEND_SQL, interval))
    by_campaign: dict[str, list] = {}
    commissions: dict[str, int] = {}
    for campaign, bucket, bucket_end, prizes, cents, commission_cents in rows:
        by_campaign.setdefault(campaign, []).append((bucket, bucket_end, int(prizes), int(cents)))
        commissions[campaign] = commissions.get(campaign, 0) + int(commission_cents)
    campaigns = {c.id: c for c in ctx.campaigns_in_view()}
    data, kpi = [], {}
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    for i, cid in enumerate(list(campaigns) + sorted(set(by_campaign) - set(campaigns))):
        budget = campaigns[cid].budget_cents if cid in campaigns else None
        # each point: budget left at the end of a period; the line starts full at the first period's start
        paid = by_campaign.get(cid, [])
        spent, xs, left, spent_series = 0, [], [], []
        if paid:
            xs.append(paid[0][0])
            spent_series.append(0.0)
            left.append(_yuan(budget) if budget is not None else None)
        for _start, end, _prizes, cents in paid:
            spent += cents
            xs.append(end)
            spent_series.append(_yuan(spent))
            left.append(_yuan(budget - spent) if budget is not None else None)
        kpi[cid] = {"budget_cents": budget, "spent_cents": spent, "commission_cents": commissions.get(cid, 0),
                    "prizes": sum(p for _, _, p, _ in paid),
                    "used_pct": _pct(spent, budget) if budget else None}
        color = palette[i % len(palette)]
        if budget is not None:
            data.append({"type": "scatter", "mode": "lines+markers", "name": f"{cid}: budget left",
                         "x": xs, "y": left, "line": {"color": color}, "fill": "tozeroy",
                         "fillcolor": "rgba(31,119,180,0.08)",
                         "customdata": spent_series,
                         "hovertemplate": "%{x}<br>left ¥%{y:,.2f}, spent ¥%{customdata:,.2f}<extra>" + cid + "</extra>"})
            if xs:
                data.append({"type": "scatter", "mode": "lines", "name": f"{cid}: budget ¥{budget / 100:,.0f}",
                             "x": [xs[0], xs[-1]], "y": [_yuan(budget)] * 2, "hoverinfo": "skip",
                             "line": {"color": color, "dash": "dot", "width": 1}})
        else:
            data.append({"type": "scatter", "mode": "lines+markers", "name": f"{cid}: spent (not in config)",
                         "x": xs, "y": spent_series, "line": {"color": color}})
    headline = "; ".join(f"{cid}: ¥{k['spent_cents'] / 100:,.2f} of ¥{k['budget_cents'] / 100:,.0f} spent "
                         f"({k['used_pct']:.1f} %), {k['prizes']:,} prizes"
                         for cid, k in kpi.items() if k["budget_cents"])
    if not data or not rows:
        figure = _empty_figure("no prizes paid yet" if campaigns else "no campaigns configured")
    else:
        figure = {"data": data, "layout": {
            "xaxis": _time_axis(ctx, f"by {label}"), "yaxis": {"title": {"text": "yuan"}, "rangemode": "tozero"}}}
    return _result(names, rows, figure, kpi, headline)


def prizes_by_tier(ctx: Context) -> dict:
    names, rows = ctx.run(PRIZES_SQL)
    got = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}
    campaigns = ctx.campaigns_in_view()
    data = []
    seen = set()
    for camp in campaigns:
        tiers = [t for t in camp.tiers]
        xs = [t.name for t in tiers]
        paid = [got.get((camp.id, t.name), (0, 0)) for t in tiers]
        seen.update((camp.id, t.name) for t in tiers)
        data.append({"type": "bar", "name": camp.id, "x": xs, "y": [p[0] for p in paid],
                     "text": [f"{p[0]:,} / {t.stock:,}" for p, t in zip(paid, tiers)], "textposition": "outside",
                     "cliponaxis": False,
                     "customdata": [[_yuan(p[1]), t.stock] for p, t in zip(paid, tiers)],
                     "hovertemplate": "tier %{x}: %{y:,} prizes, ¥%{customdata[0]:,.2f}"
                                      "<br>stock %{customdata[1]:,}<extra>" + camp.id + "</extra>"})
    rest = sorted(k for k in got if k not in seen)
    if rest:
        data.append({"type": "bar", "name": "other", "x": [f"{c}/{t}" for c, t in rest],
                     "y": [got[k][0] for k in rest]})
    if not data:
        return _result(names, rows, _empty_figure("no campaigns configured"))
    layout = {"barmode": "group", "xaxis": {"title": {"text": "tier (yuan)"}, "type": "category"},
              "yaxis": {"title": {"text": "prizes paid"}, "rangemode": "tozero"}}
    headline = f"{sum(p for p, _ in got.values()):,} prizes, ¥{sum(c for _, c in got.values()) / 100:,.2f}"
    return _result(names, rows, {"data": data, "layout": layout}, headline=headline)


def fraud_hotspots(ctx: Context) -> dict:
    names, rows = ctx.run(FRAUD_SQL)  # province, province_name, counterfeit_scans, cloned_code_scans
    alert_rows = ctx.run(FRAUD_ALERTS_SQL)[1]  # province, province_name, cloned_code_alerts
    alerts = {r[0]: int(r[2]) for r in alert_rows}
    province_names = {r[0]: r[1] for r in list(rows) + list(alert_rows)}
    provinces = sorted({r[0] for r in rows} | set(alerts))
    by = {r[0]: r for r in rows}
    merged = [[p, province_names.get(p, ""), int(by[p][2]) if p in by else 0, int(by[p][3]) if p in by else 0,
               alerts.get(p, 0)] for p in provinces]
    names = names + ["cloned_code_alerts"]
    conflicts = {str(r[0]): int(r[1]) for r in ctx.run(FRAUD_CONFLICTS_SQL)[1]}
    kpi = {"scan_id_conflicts": conflicts}
    conflict_text = (f"{sum(conflicts.values()):,} scan_id conflicts ("
                     + ", ".join(f"{k} {v:,}" for k, v in conflicts.items()) + ")") if conflicts else ""
    if not merged:
        return _result(names, merged, _empty_figure("no counterfeit or cloned-code scans"), kpi, conflict_text)
    merged.sort(key=lambda r: r[2] + r[3])
    ys = [wrap_label(place_label(r[0], r[1])) for r in merged]
    data = [{"type": "bar", "orientation": "h", "name": "counterfeit (bad_mac)", "y": ys,
             "x": [r[2] for r in merged], "marker": {"color": "#d62728"},
             "text": [f"{r[2]:,}" if r[2] else "" for r in merged], "textposition": "outside", "cliponaxis": False},
            {"type": "bar", "orientation": "h", "name": "cloned-code scans", "y": ys,
             "x": [r[3] for r in merged], "marker": {"color": "#9467bd"}, "customdata": [r[4] for r in merged],
             "text": [f"{r[3]:,}" if r[3] else "" for r in merged], "textposition": "outside", "cliponaxis": False,
             "hovertemplate": "%{y}: %{x:,} scans of cloned codes, %{customdata} alerts<extra></extra>"}]
    layout = {"barmode": "group", "xaxis": {"title": {"text": "scans"}}, "yaxis": {"type": "category"}}
    height = fit_height(ys + ys)  # two bars per province
    if height:
        layout["height"] = height
    headline = (f"{sum(r[2] for r in merged):,} counterfeit scans, {sum(r[3] for r in merged):,} scans of "
                f"cloned codes, {sum(r[4] for r in merged):,} cloned-code alerts"
                + (f"; {conflict_text}" if conflict_text else ""))
    return _result(names, merged, {"data": data, "layout": layout}, kpi, headline)


def diversion_dealer(ctx: Context) -> dict:
    names, rows = ctx.run(DIVERSION_DEALER_SQL)  # dealer_id, dealer_name, diversion, scans
    alerts = {r[0]: int(r[1]) for r in ctx.run(DIVERSION_ALERTS_SQL)[1]}
    if not rows:
        return _result(names, rows, _empty_figure("no diverted scans"), {"alerts": alerts})
    totals: dict[str, int] = {}
    dealer_names: dict[str, str] = {}
    for dealer, name, _, scans in rows:
        totals[dealer] = totals.get(dealer, 0) + int(scans)
        dealer_names[dealer] = name
    # most diverted at the top: a horizontal bar's category axis reads bottom-up
    dealers = sorted(totals, key=lambda d: (totals[d], d))
    kinds = sorted({r[2] for r in rows}, key=lambda k: list(DIVERSION_COLORS).index(k) if k in DIVERSION_COLORS else 9)
    cell = {(r[0], r[2]): int(r[3]) for r in rows}
    # dealers down the side, bars across: a dealer's name is long and gets the axis's whole width
    labels = [wrap_label(dealer_label(d, dealer_names[d])) for d in dealers]
    data = [{"type": "bar", "orientation": "h", "name": k, "y": labels, "x": [cell.get((d, k), 0) for d in dealers],
             "marker": {"color": DIVERSION_COLORS.get(k)}} for k in kinds]
    data.append({"type": "scatter", "mode": "text", "name": "alerts", "y": labels,
                 "x": [totals[d] for d in dealers], "text": [f" {alerts.get(d, 0)} alerts" for d in dealers],
                 "textposition": "middle right", "showlegend": False, "hoverinfo": "skip", "cliponaxis": False})
    layout = {"barmode": "stack", "yaxis": {"title": {"text": "dealer (goods shipped to)"}, "type": "category"},
              "xaxis": {"title": {"text": "diverted scans"}, "range": [0, 1.3 * max(totals.values())]},
              "legend": {"x": 1, "xanchor": "right"}}
    height = fit_height(labels)
    if height:
        layout["height"] = height
    headline = f"{sum(totals.values()):,} diverted scans, {sum(alerts.values()):,} diversion alerts"
    return _result(names, rows, {"data": data, "layout": layout}, {"alerts": alerts, "scans": totals}, headline)


def diversion_region(ctx: Context) -> dict:
    names, rows = ctx.run(DIVERSION_REGION_SQL)  # dealer_id, dealer_name, province, province_name, scans
    if not rows:
        return _result(names, rows, _empty_figure("no out-of-territory scans"))
    dealer_names = {r[0]: dealer_label(r[0], r[1]) for r in rows}
    province_names = {r[2]: place_label(r[2], r[3]) for r in rows}
    dealers = sorted(dealer_names)
    provinces = sorted(province_names)
    cell = {(r[0], r[2]): int(r[4]) for r in rows}
    # dealers down the side (long names, the axis takes their width), provinces across (short
    # Chinese names, wrapped when long)
    z = [[cell.get((d, p)) for p in provinces] for d in dealers]
    ys = [wrap_label(dealer_names[d]) for d in dealers]
    data = [{"type": "heatmap", "x": [wrap_label(province_names[p], LABEL_LINE_CELLS // 2) for p in provinces],
             "y": ys, "z": z, "colorscale": [[0, "#fee0d2"], [1, "#a50f15"]], "hoverongaps": False,
             "colorbar": {"title": {"text": "scans"}, "thickness": 12},
             "text": [[str(v) if v else "" for v in row] for row in z], "texttemplate": "%{text}",
             "hovertemplate": "%{y} goods in %{x}: %{z:,} scans<extra></extra>"}]
    layout = {"yaxis": {"title": {"text": "dealer (goods shipped to)"}, "type": "category"},
              "xaxis": {"title": {"text": "province scanned in"}, "type": "category", "tickangle": 0}}
    height = fit_height(ys)
    if height:
        layout["height"] = height
    top = max(rows, key=lambda r: r[4])
    headline = (f"{sum(r[4] for r in rows):,} out-of-territory scans; most: {dealer_names[top[0]]} goods in "
                f"{province_names[top[2]]} ({top[4]:,})")
    return _result(names, rows, {"data": data, "layout": layout}, headline=headline)


def _delivery_text(rec: Mapping[str, Any]) -> tuple[str, str]:
    """(state, what the list says) of an alert's webhook delivery, from its LATEST_ALERTS_SQL row."""
    state = str(rec["delivery"]) or "not sent"
    if state == "not sent":
        return state, "not sent (no webhook, or webhooks off)"
    attempts = int(rec["attempts"])
    parts = [state]
    if rec["http_status"]:
        parts.append(f"HTTP {rec['http_status']}")
    if rec["error"] and state != "delivered":
        parts.append(str(rec["error"]))
    parts.append(f"{attempts} attempt{'s' if attempts != 1 else ''}")
    return state, " · ".join(parts)


def latest_alerts(ctx: Context) -> dict:
    """The newest alerts as a table the page draws (``table``: columns, and rows of text cells with
    their delivery state), names and delivery included; the raw rows stay in ``rows``."""
    names, rows = ctx.run(LATEST_ALERTS_SQL, limit=LATEST_ALERTS_LIMIT)
    states: Counter[str] = Counter()
    table_rows = []
    for row in rows:
        rec = dict(zip(names, row))
        state, delivery = _delivery_text(rec)
        states[state] += 1
        kind = f"{rec['alert']} · {rec['subtype']}" if rec["subtype"] else str(rec["alert"])
        table_rows.append({"state": state, "cells": [
            str(rec["time"]), kind, dealer_label(rec["dealer_id"], rec["dealer_name"]),
            city_label(rec["province_name"], rec["city_name"], rec["city"]), f"{int(rec['count']):,}", delivery]})
    table = {"columns": [f"time ({ctx.tz})", "alert", "dealer", "where", "scans", "delivery"], "rows": table_rows}
    # the known states in their order, then any other a newer writer records
    order = list(DELIVERY_STATES) + sorted(set(states) - set(DELIVERY_STATES))
    kpi = {"shown": len(rows), "limit": LATEST_ALERTS_LIMIT, "delivery": {s: states[s] for s in order}}
    headline = (f"latest {len(rows):,} alerts (at most {LATEST_ALERTS_LIMIT}): "
                + ", ".join(f"{states[s]:,} {s}" for s in order if states[s])) if rows else "no alerts yet"
    result = _result(names, rows, None, kpi, headline)
    result["table"] = table
    return result


def _table(columns: list[str], cells: list[list[str]], numeric: Sequence[int], empty: str) -> dict:
    """A table the page draws (``static/dashboard.js`` renderTable): its columns, rows of text cells,
    the indexes of the columns aligned as numbers, and what it says when there are no rows."""
    return {"columns": columns, "rows": [{"cells": c} for c in cells], "numeric": list(numeric), "empty": empty}


def guides(ctx: Context) -> dict:
    """The top GUIDES_LIMIT shopping guides by commission, and the totals of all of them."""
    names, rows = ctx.run(GUIDES_SQL, limit=GUIDES_LIMIT)
    t = ctx.records(GUIDES_TOTALS_SQL)[0]
    kpi = {k: int(t[k] or 0) for k in ("guides", "sales", "units", "consumer_scans", "commissions",
                                        "commission_cents")}
    kpi.update(shown=len(rows), limit=GUIDES_LIMIT)
    cells = [[str(r["user_id"]), f"{int(r['sales']):,}", f"{int(r['units']):,}", f"{int(r['consumer_scans']):,}",
              f"{int(r['commissions']):,}", f"¥{int(r['commission_cents']) / 100:,.2f}"]
             for r in (dict(zip(names, row)) for row in rows)]
    table = _table(["guide", "sales", "units", "opened", "commissions", "commission"], cells, range(1, 6),
                   "no guide sales or commissions yet")
    headline = (f"{kpi['guides']:,} guides: {kpi['sales']:,} sales, {kpi['units']:,} units, "
                f"{kpi['consumer_scans']:,} opened by consumers, {kpi['commissions']:,} commissions "
                f"(¥{kpi['commission_cents'] / 100:,.2f})"
                + (f"; top {len(rows)} by commission" if kpi["guides"] > len(rows) else "")) if rows else ""
    result = _result(names, rows, None, kpi, headline)
    result["table"] = table
    return result


def outbound(ctx: Context) -> dict:
    """The top OUTBOUND_LIMIT dealers by outbound scans, and the totals of all of them."""
    names, rows = ctx.run(OUTBOUND_SQL, limit=OUTBOUND_LIMIT)
    t = ctx.records(OUTBOUND_TOTALS_SQL)[0]
    kpi = {k: int(t[k] or 0) for k in ("listed", "dealers", "outbound_scans", "cases", "units", "case_alerts")}
    kpi.update(shown=len(rows), limit=OUTBOUND_LIMIT)
    cells = [[dealer_label(r["dealer_id"], r["dealer_name"]), f"{int(r['outbound_scans']):,}", f"{int(r['cases']):,}",
              f"{int(r['units']):,}", f"{int(r['diverted_scans']):,}", f"{int(r['case_alerts']):,}"]
             for r in (dict(zip(names, row)) for row in rows)]
    table = _table(["dealer (shipped to)", "outbound scans", "cases", "units", "diverted scans", "case alerts"],
                   cells, range(1, 6), "no outbound scans or diverted goods yet")
    more = f"; top {len(rows)} of {kpi['listed']:,} dealers" if kpi["listed"] > len(rows) else ""
    headline = (f"{kpi['outbound_scans']:,} outbound scans to {kpi['dealers']:,} dealers: {kpi['cases']:,} cases, "
                f"{kpi['units']:,} units; {kpi['case_alerts']:,} diversion alerts on shipped goods{more}") if rows else ""
    result = _result(names, rows, None, kpi, headline)
    result["table"] = table
    return result


def throughput(ctx: Context) -> dict:
    t = ctx.throughput() if ctx.throughput else {"samples": []}
    samples = t.get("samples", [])  # [[iso time, rows written, rows/s]]
    kpi = {k: v for k, v in t.items() if k != "samples"}
    names = ["time", "rows_written", "rows_per_s"]
    if len(samples) < 2:
        return _result(names, samples, _empty_figure("sampling rows written…"), kpi)
    xs = [s[0] for s in samples]
    data = [{"type": "scatter", "mode": "lines", "name": "scans written/s", "x": xs, "y": [s[2] for s in samples],
             "fill": "tozeroy", "line": {"color": "#17becf", "shape": "hv"},
             "hovertemplate": "%{x}<br>%{y:,.0f} scans/s<extra></extra>"},
            {"type": "scatter", "mode": "lines", "name": "scans written (total)", "x": xs,
             "y": [s[1] for s in samples], "yaxis": "y2", "line": {"color": "#7f7f7f", "dash": "dot"},
             "hovertemplate": "%{x}<br>%{y:,} rows in scan_events<extra></extra>"}]
    headline = (f"now {kpi.get('current', 0):,.0f}/s, peak {kpi.get('peak', 0):,.0f}/s; "
                f"{kpi.get('written', 0):,} rows written while watched")
    layout = {"xaxis": {"title": {"text": f"wall-clock time ({kpi.get('tz', 'local')})"}, "type": "date"},
              "yaxis": {"title": {"text": "scans written/s"}, "rangemode": "tozero"},
              "yaxis2": {"overlaying": "y", "side": "right", "rangemode": "tozero", "showgrid": False,
                         "title": {"text": "rows"}},
              "margin": {"r": 64}, "hovermode": "x unified"}
    return _result(names, samples, {"data": data, "layout": layout}, kpi, headline)


PANELS: tuple[Panel, ...] = (
    Panel("overview", "Overview", "Totals over every stored scan.", overview, kind="tiles"),
    Panel("scans_per_minute", "Live scans/min by verdict",
          "Scans per minute of event time by verdict, last 24 h of data up to the latest scan "
          "(invalid events without a time: verdict mix only).", scans_per_minute, wide=True),
    Panel("verdict_mix", "Verdict mix", "Every stored scan by verdict.", verdict_mix),
    Panel("conversion_batch", "Scan conversion by batch",
          "Distinct codes with a valid scan (verdict ok or repeat) / codes issued (registry_batches.size).",
          conversion_batch),
    Panel("conversion_sku", "Scan conversion by sku",
          "Distinct codes with a valid scan / codes issued, over the sku's batches.", conversion_sku),
    Panel("conversion_province", "Scan conversion by province",
          "Codes shipped to the province's dealers (a dealer's province: its first region) with a valid scan "
          "/ codes shipped there.", conversion_province),
    Panel("repeat_rate", "Repeat-scan rate",
          "Scanners (consumers with a valid scan) with more than one distinct code / scanners; cumulative.",
          repeat_rate),
    Panel("new_returning", "New vs returning scanners",
          "Scanners per period: first valid scan in the period (new) or earlier (returning).", new_returning),
    Panel("spend_budget", "Spend vs budget",
          "Budget left per campaign as prizes and guides' commissions are paid (budget from the configuration, "
          "payments from awards).",
          spend_budget),
    Panel("prizes_by_tier", "Prizes by tier",
          "Prizes paid per campaign and tier; labels: paid / stock (guides' commissions are no prize: see "
          "Shopping guides).",
          prizes_by_tier),
    Panel("fraud_hotspots", "Counterfeit & cloned-code hot spots",
          "By province of the scan: forged codes (bad_mac), and valid scans of codes named by cloned_code alerts; "
          "headline: scan_id_conflict alerts (a scan_id reused with another event) by subtype.",
          fraud_hotspots),
    Panel("diversion_dealer", "Diversion by dealer",
          "Diverted scans by kind and the dealer the goods were shipped to; labels: diversion alerts.",
          diversion_dealer),
    Panel("diversion_region", "Diversion by region",
          "Out-of-territory scans (region diversion) by dealer and province scanned in.", diversion_region),
    Panel("guides", "Shopping guides (导购)",
          f"The {GUIDES_LIMIT} guides paid most commission (then most sales): sales = valid scans by the guide; "
          "units = unit codes the guide scanned first of all guides; opened = consumers' first scans of those units "
          "at or after the guide's; commissions from the campaigns' budgets.  Headline: every guide.",
          guides, kind="table"),
    Panel("outbound", "Outbound shipments (物流出库) by dealer",
          f"The {OUTBOUND_LIMIT} dealers with most outbound scans (valid warehouse scans naming the dealer): "
          "distinct cases; units = unit codes shipped plus the units packed in shipped cases (packing.csv); "
          "diverted scans of goods judged against the dealer; case alerts = diversion alerts whose dealer came "
          "from an outbound scan.", outbound, kind="table"),
    Panel("throughput", "Engine throughput",
          "Rows written to scan_events per second, sampled every second by this dashboard since it started.",
          throughput),
    Panel("latest_alerts", "Latest alerts",
          f"The {LATEST_ALERTS_LIMIT} newest alerts (time of the scan that fired each), newest first, with their "
          "webhook delivery: the latest record of alert_deliveries (delivered, failed, or pending: sent again "
          "later); not sent: no webhook for the dealer, or webhooks off.",
          latest_alerts, wide=True, kind="table"),
)
PANELS_BY_NAME = {p.name: p for p in PANELS}
