"""The compile report: one self-contained HTML page plus three PNG plots in the output directory.

``tvmq report out/`` reads ``out/report.json`` (written by a compile run) and renders::

    out/report.html    title, model / device / budget / binding, plans table, the three plots,
                       per-layer table, pipeline timings, latency-predictor error
    out/pareto.png     the sensitivity vs latency front: predicted and measured points, the plans
    out/latency.png    predicted vs measured end-to-end latency, y = x line and a +-10% band
    out/layers.png     per-layer latency of every candidate spec (log y), the chosen spec starred

The page has no external resources: the CSS is inline, the images are referenced by their
relative file names (the directory can be moved or zipped as a whole). A small inline script sets
``data-images-loaded`` and ``data-layer-rows`` on ``<body>`` once the page has loaded (the
tests read them back from a headless browser: ``tests/chromium.py``).

Data contract (``report.json`` / the ``data`` argument of ``write_report``). Only ``"model"`` and
``"layers"`` are required; everything else is rendered when present, and a ``None`` value is shown
as "not measured"::

    {
     "model": "mobilenetv2.onnx",
     "device": {"cpu": "AMD EPYC", "isa": "avx2", "threads": 1},
     "budget": {"kind": "latency", "value": 8.0, "unit": "ms"},      # the user's budget
     "binding": ["latency"],                                          # budgets that bind
     "plans": [{"label": "fp32", "predicted_ms": 9.1, "measured_ms": 9.3, "weight_bytes": 14000000,
                "top1": 0.826, "agreement": 1.0, "sensitivity": 0.0}, ...],  # fp32 / w8a8 / chosen
     "front": [{"label": "p0", "sensitivity": 0.12, "predicted_ms": 7.9, "measured_ms": 8.1,
                "weight_bytes": 3500000, "top1": None, "agreement": None}, ...],
     "layers": [{"name": "/features/0/Conv", "op": "conv2d", "chosen": "w8a8",
                 "sqnr_db": {"w8a8": 31.2, "w4a8": 18.0, "fp32": None},   # per candidate spec
                 "latency_us": {"w8a8": 120.0, "fp32": 140.0},
                 "latency_source": {"w8a8": "measured", "fp32": "predicted"},
                 "weight_bytes": {"w8a8": 864, "w4a8": 432, "fp32": 3456}}, ...],
     "timings": {"calibrate": 12.0, "analyze": 30.1, "tune": 600.0, "allocate": 0.5, "build": 40.0},
     "predictor_error": {"median_ape": 0.08, "p90_ape": 0.2, "n_test": 40}
    }

Conventions: the error of a prediction is ``(predicted - measured) / measured``; weights are
shown in MB (10^6 bytes); a layer latency whose source is not ``"measured"`` is marked ``*``
(predicted); a spec a layer has no entry for is shown as an em dash.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import TvmqError

__all__ = ["ReportError", "load_report_data", "render", "write_report"]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
IMAGES = {"pareto": "pareto.png", "latency": "latency.png", "layers": "layers.png"}
NOT_MEASURED = "not measured"


class ReportError(TvmqError):
    """``report.json`` is missing or malformed, or the report data breaks the contract."""


# ------------------------------------------------------------------------------------------ data


def load_report_data(out_dir: str | os.PathLike) -> dict:
    """Read ``out_dir/report.json``; a missing, unreadable or malformed file is a ``ReportError``."""
    path = Path(out_dir) / REPORT_JSON
    if not path.is_file():
        raise ReportError(f"{path} not found: `tvmq report` renders the report.json that a compile "
                          f"run writes into its output directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"corrupt {path}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None
    _validate(data, str(path))
    return data


def _validate(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ReportError(f"corrupt {where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("model", "layers") if k not in data]
    if missing:
        raise ReportError(f"corrupt {where}: missing key(s) {', '.join(missing)}")
    if not isinstance(data["layers"], list) or not all(isinstance(l, dict) for l in data["layers"]):
        raise ReportError(f"corrupt {where}: 'layers' must be a list of objects")
    for key in ("plans", "front"):
        points = data.get(key) or []
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise ReportError(f"corrupt {where}: '{key}' must be a list of objects")


def _specs(layers: Iterable[Mapping]) -> list[str]:
    """Every candidate spec named by any layer, in order of first appearance."""
    seen: dict[str, None] = {}
    for layer in layers:
        if layer.get("chosen") is not None:
            seen.setdefault(str(layer["chosen"]), None)
        for key in ("sqnr_db", "latency_us", "weight_bytes"):
            for spec in layer.get(key) or {}:
                seen.setdefault(str(spec), None)
    return list(seen)


def _num(v: Any) -> float | None:
    """``v`` as a float, ``None`` for None / NaN / non-numbers (bools included)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _t(v: Any) -> str:
    """Text for matplotlib: a ``$`` would start mathtext (and can fail to parse)."""
    return str(v).replace("$", r"\$")


def _error(p: Mapping) -> float | None:
    pred, meas = _num(p.get("predicted_ms")), _num(p.get("measured_ms"))
    if pred is None or meas is None or meas == 0:
        return None
    return (pred - meas) / meas


# ----------------------------------------------------------------------------------------- plots


def _plot_pareto(data: Mapping, path: Path) -> None:
    from matplotlib.figure import Figure  # (deferred: matplotlib is optional, HTML report only)

    fig = Figure(figsize=(8, 5.5), dpi=100)
    ax = fig.add_subplot()
    front = [p for p in data.get("front") or [] if _num(p.get("sensitivity")) is not None]
    xs = [_num(p["sensitivity"]) for p in front]
    pred = [(x, _num(p.get("predicted_ms"))) for x, p in zip(xs, front) if _num(p.get("predicted_ms")) is not None]
    meas = [(x, _num(p.get("measured_ms"))) for x, p in zip(xs, front) if _num(p.get("measured_ms")) is not None]
    for x, p in zip(xs, front):
        a, b = _num(p.get("predicted_ms")), _num(p.get("measured_ms"))
        if a is not None and b is not None:
            ax.plot([x, x], [a, b], color="0.6", lw=1, zorder=1)
    if pred:
        ax.plot(*zip(*sorted(pred)), "o-", color="tab:blue", ms=6, lw=1, label="front, predicted", zorder=2)
    if meas:
        ax.plot(*zip(*meas), "x", color="tab:red", ms=8, mew=2, label="front, measured", zorder=3)
    plotted = bool(pred or meas)
    labelled: set[str] = set()
    for p in data.get("plans") or []:
        x = _num(p.get("sensitivity"))
        y = _num(p.get("measured_ms"))
        kind = "measured"
        if y is None:
            y, kind = _num(p.get("predicted_ms")), "predicted"
        if x is None or y is None:
            continue
        ax.plot([x], [y], "D" if kind == "measured" else "d", color="tab:green", ms=8, zorder=4,
                mfc="tab:green" if kind == "measured" else "none",
                label=None if kind in labelled else f"plan, {kind}")
        labelled.add(kind)
        ax.annotate(_t(f"{p.get('label', '?')} ({kind})"), (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=9, color="darkgreen")
        plotted = True
    budget = data.get("budget") or {}
    if budget.get("kind") == "latency" and _num(budget.get("value")) is not None:
        ax.axhline(_num(budget["value"]), color="tab:orange", ls="--", lw=1,
                   label=_t(f"latency budget {_num(budget['value']):g} {budget.get('unit', 'ms')}"))
        plotted = True
    if not plotted:
        ax.text(0.5, 0.5, "no Pareto front (no points with a sensitivity and a latency)",
                ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel("sensitivity (output SQNR loss)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(_t(f"Sensitivity vs latency: {data.get('model', '')}"))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def _plot_latency(data: Mapping, path: Path) -> None:
    from matplotlib.figure import Figure  # (deferred: matplotlib is optional, HTML report only)

    fig = Figure(figsize=(6.5, 6), dpi=100)
    ax = fig.add_subplot()
    groups = (("front", data.get("front") or [], "o", "tab:blue"), ("plans", data.get("plans") or [], "D", "tab:green"))
    values: list[float] = []
    for name, points, marker, color in groups:
        pts = [(p, _num(p.get("predicted_ms")), _num(p.get("measured_ms"))) for p in points]
        pts = [(p, a, b) for p, a, b in pts if a is not None and b is not None]
        if not pts:
            continue
        ax.plot([a for _, a, _ in pts], [b for _, _, b in pts], marker, ls="none", color=color, ms=7, label=name)
        for p, a, b in pts:
            values += [a, b]
            if name == "plans":
                ax.annotate(_t(f"{p.get('label', '?')} ({_error(p):+.0%})"), (a, b), textcoords="offset points",
                            xytext=(6, -12), fontsize=9, color="darkgreen")
    if values:
        lo, hi = min(values), max(values)
        pad = 0.1 * (hi - lo) or 0.1 * hi or 1.0
        lo, hi = max(0.0, lo - pad), hi + pad
        ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="measured = predicted")
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.5", alpha=0.15,
                        label="+-10%")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no point has both a predicted and a measured latency", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured latency (ms)")
    ax.set_title("Latency predictor, end to end")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _plot_layers(data: Mapping, path: Path) -> None:
    """One marker line per spec over the layers (log y): filled = measured, hollow = predicted,
    a star on each layer's chosen spec. Lines rather than bars stay legible at 50+ layers."""
    from matplotlib.figure import Figure  # (deferred: matplotlib is optional, HTML report only)
    from matplotlib.lines import Line2D  # (deferred: as above)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # (as above)

    layers = data.get("layers") or []
    specs = _specs(layers)
    n = max(len(layers), 1)
    width_in = min(20.0, max(8.0, 0.22 * n + 2))
    fig = Figure(figsize=(width_in, 6), dpi=100)
    ax = fig.add_subplot()
    markers = "os^vDPX<>p"
    chosen_pts: list[tuple[int, float]] = []
    any_pred = False
    for j, spec in enumerate(specs):
        color, marker = f"C{j % 10}", markers[j % len(markers)]
        pts = []
        for i, layer in enumerate(layers):
            v = _num((layer.get("latency_us") or {}).get(spec))
            if v is None or v <= 0:
                continue
            predicted = (layer.get("latency_source") or {}).get(spec, "measured") != "measured"
            any_pred |= predicted
            pts.append((i, v, predicted))
            if layer.get("chosen") == spec:
                chosen_pts.append((i, v))
        if not pts:
            continue
        ax.plot([i for i, _, _ in pts], [v for _, v, _ in pts], "-", color=color, lw=0.8, alpha=0.5, zorder=1)
        for predicted in (False, True):
            sel = [(i, v) for i, v, p in pts if p == predicted]
            if sel:
                ax.plot(*zip(*sel), marker, ls="none", color=color, ms=6, zorder=2,
                        mfc="none" if predicted else color)
    if chosen_pts:
        ax.plot(*zip(*chosen_pts), "*", ls="none", color="k", ms=13, mfc="none", mew=1.2, zorder=3)
    if any(ax.get_lines()):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        handles = [Line2D([], [], color=f"C{j % 10}", marker=markers[j % len(markers)], lw=0.8, label=_t(spec))
                   for j, spec in enumerate(specs)]
        handles.append(Line2D([], [], color="k", marker="*", ms=13, mfc="none", ls="none", label="chosen spec"))
        if any_pred:
            handles.append(Line2D([], [], color="0.4", marker="o", mfc="none", ls="none",
                                  label="hollow: predicted (not measured)"))
        rows = 1 if width_in >= 12 else 2     # the legend sits in headroom above the data
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** (0.12 * rows))
        ax.legend(handles=handles, loc="upper left", fontsize=9, ncol=-(-len(handles) // rows))
    else:
        ax.text(0.5, 0.5, "no per-layer latency", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([_t(l.get("name", "?")) for l in layers], rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("layer latency (us)")
    ax.set_title("Per-layer latency per spec")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


# ------------------------------------------------------------------------------------------ HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; font-family: monospace; }
td.chosen { background: #d9f2d9; font-weight: bold; }
tr.chosen-plan td { background: #d9f2d9; }
.na { color: #999; font-style: italic; }
.scroll { overflow-x: auto; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: bold; } dl.meta dd { margin: 0; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var n = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (img.complete && img.naturalWidth > 0) { n += 1; }
  });
  document.body.dataset.imagesLoaded = String(n);
  document.body.dataset.layerRows = String(document.querySelectorAll("#layer-table tbody tr").length);
});
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _na(text: str = NOT_MEASURED) -> str:
    return f'<span class="na">{_e(text)}</span>'


def _fmt(v: Any, fmt: str = "{:.2f}") -> str:
    """A number formatted and escaped; None / NaN is "not measured", a non-number is shown as text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return _na()
    x = _num(v)
    return _e(fmt.format(x) if x is not None else v)


def _pct(v: Any, signed: bool = False) -> str:
    x = _num(v)
    return _na() if x is None else _e(f"{x:+.1%}" if signed else f"{x:.1%}")


def _mb(v: Any) -> str:
    x = _num(v)
    return _na() if x is None else _e(f"{x / 1e6:.2f}")


def _points_table(points: list[Mapping], table_id: str, chosen_label: str | None = None) -> str:
    """Plans or front points: one row each, the one labelled ``chosen_label`` highlighted."""
    head = ("label", "predicted ms", "measured ms", "error %", "weight MB", "top-1", "agreement", "sensitivity")
    rows = []
    for p in points:
        cls = ' class="chosen-plan"' if chosen_label is not None and p.get("label") == chosen_label else ""
        rows.append(
            f"<tr{cls}><td class=\"name\">{_e(p.get('label', '?'))}</td>"
            f"<td>{_fmt(p.get('predicted_ms'))}</td><td>{_fmt(p.get('measured_ms'))}</td>"
            f"<td>{_pct(_error(p), signed=True)}</td><td>{_mb(p.get('weight_bytes'))}</td>"
            f"<td>{_pct(p.get('top1'))}</td><td>{_pct(p.get('agreement'))}</td>"
            f"<td>{_fmt(p.get('sensitivity'), '{:.4g}')}</td></tr>")
    ths = "".join(('<th class="name">' if h == "label" else "<th>") + f"{_e(h)}</th>" for h in head)
    return (f'<table id="{table_id}"><thead><tr>{ths}</tr></thead>\n<tbody>\n' + "\n".join(rows)
            + "\n</tbody></table>")


def _layer_table(layers: list[Mapping], specs: list[str]) -> str:
    groups = (("SQNR dB", "sqnr_db", "{:.1f}"), ("latency us (* predicted)", "latency_us", "{:.1f}"),
              ("weight bytes", "weight_bytes", "{:,.0f}"))
    ns = max(len(specs), 1)
    head1 = ('<th class="name" rowspan="2">#</th><th class="name" rowspan="2">name</th>'
             '<th class="name" rowspan="2">op</th><th class="name" rowspan="2">chosen</th>'
             + "".join(f'<th colspan="{ns}">{_e(title)}</th>' for title, _, _ in groups))
    head2 = "".join(f"<th>{_e(s)}</th>" for _ in groups for s in (specs or ["-"]))
    rows = []
    for i, layer in enumerate(layers):
        chosen = layer.get("chosen")
        cells = [f"<td>{i}</td>", f'<td class="name">{_e(layer.get("name", "?"))}</td>',
                 f'<td class="name">{_e(layer.get("op", ""))}</td>',
                 f'<td class="name chosen">{_e(chosen)}</td>' if chosen is not None
                 else f'<td class="name">{_na("none")}</td>']
        for _, key, fmt in groups:
            values = layer.get(key) or {}
            for spec in specs or ["-"]:
                cls = ' class="chosen"' if spec == chosen else ""
                if spec not in values:
                    cells.append(f"<td{cls}>&mdash;</td>")
                    continue
                text = _fmt(values[spec], fmt)
                source = (layer.get("latency_source") or {}).get(spec, "measured")
                if key == "latency_us" and values[spec] is not None and source != "measured":
                    text += "*"
                cells.append(f"<td{cls}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="layer-table"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>\n'
            "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _timings_table(timings: Mapping) -> str:
    vals = {k: _num(v) for k, v in timings.items()}
    total = sum(v for v in vals.values() if v is not None)
    rows = [f'<tr><td class="name">{_e(k)}</td><td>{_fmt(timings[k], "{:.1f}")}</td>'
            f"<td>{_pct(v / total) if v is not None and total > 0 else _na()}</td></tr>"
            for k, v in vals.items()]
    rows.append(f'<tr><th class="name">total</th><th>{_e(f"{total:.1f}")}</th><th></th></tr>')
    return ('<table id="timings"><thead><tr><th class="name">stage</th><th>seconds</th><th>share</th></tr>'
            "</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _meta(data: Mapping) -> str:
    """model / device / budget / binding as a definition list (only the keys present)."""
    items = [("model", _e(data["model"]))]
    device = data.get("device")
    if isinstance(device, Mapping):
        items.append(("device", _e(", ".join(f"{k}: {v}" for k, v in device.items()))))
    elif device is not None:
        items.append(("device", _e(device)))
    if "budget" in data:
        budget = data["budget"]
        if isinstance(budget, Mapping):
            value = _na("none") if budget.get("value") is None else _fmt(budget["value"], "{:g}")
            unit = f" {_e(budget['unit'])}" if budget.get("unit") else ""
            items.append(("budget", f"{_e(budget.get('kind', '?'))} &le; {value}{unit}"))
        else:
            items.append(("budget", _na("none") if budget is None else _e(budget)))
    if "binding" in data:
        binding = data["binding"] or []
        items.append(("binding", _e(", ".join(map(str, binding))) if binding else "none"))
    return '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _html(data: Mapping, specs: list[str]) -> str:
    plans, front, layers = data.get("plans") or [], data.get("front") or [], data["layers"]
    parts = [f"<h1>tvmq report: {_e(data['model'])}</h1>", _meta(data), "<h2>Plans</h2>"]
    # the plan labelled "chosen" (the allocator's answer) is highlighted
    parts.append(_points_table(plans, "plans", "chosen") if plans else f"<p>{_na('no plans')}</p>")
    parts.append("<p>error = (predicted &minus; measured) / measured; weights in MB (10<sup>6</sup> bytes).</p>")
    parts.append("<h2>Sensitivity vs latency</h2>")
    parts.append(f'<img id="pareto" src="{IMAGES["pareto"]}" alt="Pareto front: sensitivity vs latency">')
    parts.append("<h3>Pareto front</h3>")
    parts.append(_points_table(front, "front") if front else f"<p>{_na('empty front')}</p>")
    parts.append("<h2>Latency prediction</h2>")
    parts.append(f'<img id="latency" src="{IMAGES["latency"]}" alt="predicted vs measured latency">')
    pe = data.get("predictor_error")
    if isinstance(pe, Mapping):
        parts.append('<table id="predictor-error"><thead><tr><th>median APE</th><th>p90 APE</th>'
                     "<th>test records</th></tr></thead><tbody>"
                     f"<tr><td>{_pct(pe.get('median_ape'))}</td><td>{_pct(pe.get('p90_ape'))}</td>"
                     f"<td>{_fmt(pe.get('n_test'), '{:.0f}')}</td></tr></tbody></table>"
                     "<p>Per-layer latency predictor, absolute percentage error on held-out records.</p>")
    else:
        parts.append(f"<p>predictor error: {_na()}</p>")
    parts.append("<h2>Layers</h2>")
    parts.append(f'<img id="layers" src="{IMAGES["layers"]}" alt="per-layer latency per spec">')
    parts.append(f"<p>{len(layers)} layer(s); the chosen spec is highlighted; "
                 "&mdash; = spec not a candidate for the layer; * = predicted latency.</p>")
    parts.append(_layer_table(layers, specs))
    parts.append("<h2>Pipeline timings</h2>")
    timings = data.get("timings")
    parts.append(_timings_table(timings) if isinstance(timings, Mapping) and timings else f"<p>{_na()}</p>")
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<title>tvmq report: {_e(data['model'])}</title>\n<style>{_CSS}</style>\n"
            f"<script>{_SCRIPT}</script>\n</head>\n<body>\n{body}\n</body></html>\n")


# --------------------------------------------------------------------------------------- public


def write_report(data: dict, out_dir: str | os.PathLike) -> Path:
    """Render ``out_dir/report.html`` plus PNG plots next to it; returns the HTML path."""
    _validate(data, "report data")
    import matplotlib  # (deferred: optional; an ImportError leaves report.json without the page)

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_pareto(data, out / IMAGES["pareto"])
    _plot_latency(data, out / IMAGES["latency"])
    _plot_layers(data, out / IMAGES["layers"])
    path = out / REPORT_HTML
    path.write_text(_html(data, _specs(data["layers"])), encoding="utf-8")
    return path


def render(out_dir: str | os.PathLike) -> Path:
    """``tvmq report out/``: render ``out/report.json`` into ``out/report.html``; returns its path."""
    return write_report(load_report_data(out_dir), out_dir)
