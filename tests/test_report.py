"""The compile report: three valid PNG plots and a self-contained HTML page, checked in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from tvmq import report
from tvmq.errors import TvmqError

from .chromium import CHROMIUM_NAMES, check_with_chromium

SPECS = ("fp32", "w8a8", "w4a8")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n_layers: int = 5) -> dict:
    """n layers x 3 specs, 4 front points (one not measured), 3 plans; one layer lacks w4a8."""
    layers = []
    for i in range(n_layers):
        lat = {"fp32": 140.0 + 10 * i, "w8a8": 90.0 + 5 * i, "w4a8": 70.0 + 4 * i}
        layer = {"name": f"/features/{i}/Conv", "op": "depthwise" if i % 2 else "conv2d",
                 "chosen": SPECS[i % 3],
                 "sqnr_db": {"fp32": None, "w8a8": 31.2 - i, "w4a8": 18.0 - i},
                 "latency_us": lat,
                 "latency_source": {"fp32": "measured", "w8a8": "measured", "w4a8": "predicted"},
                 "weight_bytes": {"fp32": 3456 * (i + 1), "w8a8": 864 * (i + 1), "w4a8": 432 * (i + 1)}}
        layers.append(layer)
    if n_layers > 3:   # a layer for which w4a8 is no candidate
        for key in ("sqnr_db", "latency_us", "latency_source", "weight_bytes"):
            layers[3][key].pop("w4a8")
        layers[3]["chosen"] = "w8a8"
    front = [{"label": f"p{k}", "sensitivity": s, "predicted_ms": p, "measured_ms": m,
              "weight_bytes": w, "top1": t, "agreement": a}
             for k, (s, p, m, w, t, a) in enumerate([(0.0, 9.1, 9.3, 14e6, 0.826, 1.0),
                                                      (0.05, 8.4, 8.6, 6e6, 0.82, 0.97),
                                                      (0.12, 7.9, 8.1, 3.5e6, None, None),
                                                      (0.30, 7.2, None, 2e6, None, None)])]
    plans = [{"label": "fp32", "predicted_ms": 9.1, "measured_ms": 9.3, "weight_bytes": 14000000,
              "top1": 0.826, "agreement": 1.0, "sensitivity": 0.0},
             {"label": "w8a8", "predicted_ms": 7.0, "measured_ms": 7.4, "weight_bytes": 3500000,
              "top1": 0.80, "agreement": 0.93, "sensitivity": 0.2},
             {"label": "chosen", "predicted_ms": 7.9, "measured_ms": 8.1, "weight_bytes": 4000000,
              "top1": 0.821, "agreement": 0.97, "sensitivity": 0.12}]
    return {"model": "mobilenetv2<test>.onnx",
            "device": {"cpu": "AMD EPYC", "isa": "avx2", "threads": 1},
            "budget": {"kind": "latency", "value": 8.0, "unit": "ms"},
            "binding": ["latency"], "plans": plans, "front": front, "layers": layers,
            "timings": {"calibrate": 12.0, "analyze": 30.1, "tune": 600.0, "allocate": 0.5, "build": 40.0},
            "predictor_error": {"median_ape": 0.08, "p90_ape": 0.2, "n_test": 40}}


def _assert_pngs(out: Path) -> None:
    for name in ("pareto.png", "latency.png", "layers.png"):
        blob = (out / name).read_bytes()
        assert blob[:8] == PNG_MAGIC, name
        assert len(blob) > 1024, (name, len(blob))
        # IHDR: a real image, not a 0x0 placeholder
        w, h = struct.unpack(">II", blob[16:24])
        assert w >= 300 and h >= 300, (name, w, h)


def _layer_rows(page: str) -> list[str]:
    tbody = re.search(r'<table id="layer-table">.*?<tbody>(.*?)</tbody>', page, re.DOTALL)
    assert tbody, "no per-layer table"
    return re.findall(r"<tr>.*?</tr>", tbody.group(1), re.DOTALL)


def test_full_report(tmp_path: Path) -> None:
    data = _data()
    path = report.write_report(data, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    _assert_pngs(path.parent)
    page = path.read_text(encoding="utf-8")
    for img in ("pareto", "latency", "layers"):
        assert f'<img id="{img}" src="{img}.png"' in page
    rows = _layer_rows(page)
    assert len(rows) == 5
    for i, row in enumerate(rows):
        assert f"/features/{i}/Conv" in row
        assert f'<td class="name chosen">{data["layers"][i]["chosen"]}</td>' in row
    assert "90.0</td>" in rows[0] and "70.0*</td>" in rows[0]    # measured plain, predicted starred
    assert rows[3].count("&mdash;") == 3                           # w4a8 missing: SQNR, latency, bytes
    assert "3,456" in rows[0]                                      # weight bytes per spec
    # the model name is escaped everywhere, never raw
    assert "mobilenetv2&lt;test&gt;.onnx" in page and "<test>" not in page
    plans = re.search(r'<table id="plans">.*?</table>', page, re.DOTALL).group(0)
    assert plans.count("<tr") == 4                                 # header + 3 plans
    assert '<tr class="chosen-plan"><td class="name">chosen</td><td>7.90</td><td>8.10</td><td>-2.5%</td>' in plans
    assert "<td>14.00</td><td>82.6%</td><td>100.0%</td>" in plans  # weight MB, top-1, agreement
    assert "latency &le; 8 ms" in page and "<dd>latency</dd>" in page
    assert "cpu: AMD EPYC, isa: avx2, threads: 1" in page
    assert '<td class="name">tune</td><td>600.0</td>' in page and "682.6" in page   # total seconds
    assert "<td>8.0%</td><td>20.0%</td><td>40</td>" in page                          # predictor error
    assert page.count(report.NOT_MEASURED) >= 5       # fp32 SQNR x5, p2 top-1/agreement, p3 measured
    assert "document.body.dataset.imagesLoaded" in page and "http" not in page       # self-contained


def test_none_measured_empty_front_single_layer(tmp_path: Path) -> None:
    data = _data(1)
    data["front"] = []
    for p in data["plans"]:
        p["measured_ms"] = p["top1"] = p["agreement"] = None
    data["layers"][0]["latency_source"] = {}           # no source: taken as measured
    data.pop("timings")
    data.pop("predictor_error")
    path = report.write_report(data, tmp_path)
    _assert_pngs(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert len(_layer_rows(page)) == 1
    assert "empty front" in page
    plans = re.search(r'<table id="plans">.*?</table>', page, re.DOTALL).group(0)
    assert plans.count(report.NOT_MEASURED) == 3 * 4   # measured, error, top-1, agreement per plan
    assert '<table id="front"' not in page and '<table id="timings"' not in page


def test_minimal_data_layers_with_missing_specs(tmp_path: Path) -> None:
    data = {"model": "m.onnx", "layers": [
        {"name": "a$x_1$", "op": "conv2d", "chosen": "w8a8", "latency_us": {"w8a8": 5.0, "w4a8": float("nan")}},
        {"name": "b", "op": "dense", "sqnr_db": {"w4a8": 12.0}},                # no chosen, no latency
        {"name": "c", "op": "conv2d", "chosen": "fp32", "latency_us": {"fp32": None}}]}
    page = report.write_report(data, tmp_path).read_text(encoding="utf-8")
    _assert_pngs(tmp_path)
    rows = _layer_rows(page)
    assert len(rows) == 3
    assert "a$x_1$" in rows[0] and report.NOT_MEASURED in rows[0]       # "$" is no mathtext; NaN
    assert '<span class="na">none</span>' in rows[1]                     # b has no chosen spec
    assert report.NOT_MEASURED in rows[2]                                # c: fp32 latency None
    assert "<th>w8a8</th><th>w4a8</th><th>fp32</th>" in page             # spec union, first seen order


def test_invalid_data_is_a_tvmq_error(tmp_path: Path) -> None:
    with pytest.raises(TvmqError, match="missing key.*layers"):
        report.write_report({"model": "m.onnx"}, tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_load_report_data_and_render(tmp_path: Path) -> None:
    with pytest.raises(TvmqError, match="report.json not found"):
        report.load_report_data(tmp_path)
    (tmp_path / "report.json").write_text('{"model": "m.onnx", "layers": [', encoding="utf-8")
    with pytest.raises(TvmqError, match=r"corrupt .*report.json: .* line 1") as e:
        report.load_report_data(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "report.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TvmqError, match="expected a JSON object"):
        report.load_report_data(tmp_path)
    (tmp_path / "report.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TvmqError, match="report.json"):
        report.load_report_data(tmp_path)
    data = _data()
    (tmp_path / "report.json").write_text(json.dumps(data), encoding="utf-8")
    assert report.load_report_data(tmp_path) == json.loads(json.dumps(data))
    path = report.render(tmp_path)
    assert path == tmp_path / "report.html"
    assert len(_layer_rows(path.read_text(encoding="utf-8"))) == 5
    _assert_pngs(tmp_path)


def test_missing_chromium_names_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y chromium"):
        check_with_chromium(tmp_path / "report.html")


def test_report_loads_in_chromium(tmp_path: Path) -> None:
    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        pytest.skip("chromium not installed: run `apt-get install -y chromium` (or make report-deps)")
    data = _data(7)
    path = report.write_report(data, tmp_path)
    result = check_with_chromium(path)
    assert result["images_loaded"] == 3
    assert result["layer_rows"] == 7
    assert result["images"] == ["pareto", "latency", "layers"]
    assert result["has_plans_table"] is True
    # a broken image is counted as not loaded: the check really looks at the images
    (tmp_path / "latency.png").write_bytes(b"not a png")
    assert check_with_chromium(path)["images_loaded"] == 2
