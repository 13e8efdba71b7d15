"""The tuner: database round trip / merge / corrupt lines, resume after a kill, determinism, the
search with a scripted runner, one real tuning run, RPC on localhost, and compiles that use it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from schedules import registry, space
from schedules.target_features import detect_host
from schedules.workload import Conv2dWorkload
from tvmq.frontend import prepare
from tvmq.tune import predictor
from tvmq.tune.tuner import PLAYOFF_ROUNDS, PLAYOFF_SIZE
from tvmq.tune import (
    LatencyPredictor,
    LatencyTable,
    RunnerMeasurer,
    ScriptedMeasurer,
    TuningDatabase,
    TuningRecord,
    conversion_for,
    device_fingerprint,
    extract_tasks,
    tune,
)

from .conftest import FMNIST_DIR, ROOT, fmnist_inputs
from .isa import PROFILES, skip_reason

MODEL = FMNIST_DIR / "model.onnx"
FEATURES = detect_host()


@pytest.fixture(scope="module")
def fmnist_tasks():  # type: ignore[no-untyped-def]
    pm = prepare(MODEL)
    return pm, extract_tasks(pm, ["w8a8", "fp32"], FEATURES)


# a workload that builds (a record whose workload does not is skipped as foreign)
_WORKLOAD = {"op": "conv2d", **Conv2dWorkload(batch=1, in_channels=8, height=4, width=4, out_channels=8,
                                              kernel_h=1, kernel_w=1).to_json()}


def _record(task: str = "t1", us: float | None = 10.0, device: str = "dev-a", cfg: int = 0) -> TuningRecord:
    return TuningRecord(task=task, kernel="conv2d/w8a8/avx2", spec="w8a8", workload=_WORKLOAD,
                        config={"type": "X", "k": cfg},
                        latency=None if us is None else {"median_us": us, "min_us": us, "n": 3, "spread": 0.0},
                        device={"id": device, "cpu": "c", "isa": "avx2", "threads": 1},
                        error=None if us is not None else "build: boom")


def _expected_total(tasks, trials: int, features=FEATURES, playoff: bool = True) -> int:  # type: ignore[no-untyped-def]
    """Measurements of a run where every candidate succeeds: the search's, then (``playoff``)
    ``PLAYOFF_ROUNDS`` rounds of the fallback and up to three others, wherever there are others."""
    n = 0
    for t in tasks:
        if t.kind == "conversion":
            n += 1
        else:
            k = registry.get(registry.KernelKey.parse(t.kernel))
            searched = min(trials, len(space.config_space(k.fallback_config(t.workload, features), t.workload,
                                                          features)))
            finalists = min(searched, PLAYOFF_SIZE) if searched > 1 else 0
            n += searched + (PLAYOFF_ROUNDS * finalists if playoff else 0)
    return n


def _synthetic_us(task, cfg) -> float:  # type: ignore[no-untyped-def]
    """A deterministic latency landscape: work with padding, plus a knob-dependent term."""
    if cfg is None:
        return 1.0 + task.macs / 1e6
    c = space.config_to_json(cfg)
    knobs = sum(float(v) for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    return task.macs / 1e4 * (1.0 + 0.3 * abs(np.sin(knobs)))


# -- database -------------------------------------------------------------------------------
def test_database_round_trip_and_queries(tmp_path: Path) -> None:
    path = tmp_path / "db.jsonl"
    db = TuningDatabase(path)
    for i, us in enumerate([12.0, 9.0, None, 11.0]):
        db.append(_record(us=us, cfg=i))
    db.append(_record(task="t2", us=5.0))
    again = TuningDatabase(path)
    assert [r.to_json() for r in again] == [r.to_json() for r in db]
    assert len(path.read_text().splitlines()) == 5
    best = again.best("t1", "w8a8", "dev-a")
    assert best is not None and best.median_us == 9.0 and best.config["k"] == 1
    assert again.best("t1", "w8a8", "dev-b") is None  # another device: nothing measured there
    assert len(again.query("t1", "w8a8", "dev-a")) == 4
    assert not again.query("t1", "w8a8", "dev-a")[2].ok


def test_database_skips_corrupt_and_foreign_lines_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "db.jsonl"
    good = json.dumps(_record(us=7.0).to_json())
    foreign = dict(_record(us=8.0).to_json(), schema=99)
    path.write_text("\n".join([good, "{not json", json.dumps({"hello": 1}), json.dumps(foreign), "", good]) + "\n"
                    + good[: len(good) // 2])  # a line cut by a kill
    with pytest.warns(UserWarning, match=r"skipped 4 corrupt or foreign line\(s\)"):
        db = TuningDatabase(path)
    assert len(db) == 2 and [n for n, _ in db.skipped] == [2, 3, 4, 7]
    # appending after a cut line starts a new line: the new record survives a reload
    db.append(_record(us=3.0, cfg=5))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again = TuningDatabase(path)
    assert len(again) == 3 and again.best("t1", "w8a8", "dev-a").median_us == 3.0


def test_merge_keeps_devices_apart_and_drops_duplicates(tmp_path: Path) -> None:
    a, b = TuningDatabase(tmp_path / "a.jsonl"), TuningDatabase(tmp_path / "b.jsonl")
    shared = _record(us=10.0, device="dev-a")
    a.append(shared)
    a.append(_record(us=8.0, device="dev-a", cfg=1))
    b.append(shared)
    b.append(_record(us=4.0, device="dev-b", cfg=1))
    merged = TuningDatabase.merge([a.path, b.path], tmp_path / "m.jsonl")
    assert len(merged) == 3 and set(merged.devices()) == {"dev-a", "dev-b"}
    reread = TuningDatabase(tmp_path / "m.jsonl")
    assert reread.best("t1", "w8a8", "dev-a").median_us == 8.0
    assert reread.best("t1", "w8a8", "dev-b").median_us == 4.0
    with pytest.raises(Exception, match="exists"):
        TuningDatabase.merge([a.path], tmp_path / "m.jsonl")


def test_device_fingerprint_separates_threads_and_features() -> None:
    one, two = device_fingerprint(FEATURES, 1), device_fingerprint(FEATURES, 2)
    assert one["id"] != two["id"]
    assert device_fingerprint(FEATURES, 1)["id"] == one["id"]
    assert device_fingerprint(FEATURES.with_isa("generic"), 1)["id"] != one["id"]


# -- tasks ------------------------------------------------------------------------------------
def test_tasks_are_distinct_workloads_with_their_layers(fmnist_tasks) -> None:  # type: ignore[no-untyped-def]
    pm, tasks = fmnist_tasks
    kernels = [t for t in tasks if t.kind == "kernel"]
    assert {t.spec for t in kernels} == {"w8a8", "fp32"}
    layers = sorted(l for t in kernels if t.spec == "w8a8" for l in t.layers)
    assert layers == sorted(l.name for l in pm.layers)  # every layer, once
    for layout in ("NCHW", "NHWC"):  # fp32: every layer once per lowering (mixed plans', plain fp32 builds')
        layers = sorted(l for t in kernels if t.spec == "fp32" and getattr(t.workload, "layout", layout) == layout
                        for l in t.layers)
        assert layers == sorted(l.name for l in pm.layers), layout
    assert len({t.key for t in tasks}) == len(tasks)
    # the same model twice: the same keys (identical workloads tune once)
    again = extract_tasks(pm, ["w8a8"], FEATURES)
    assert {t.key for t in again} <= {t.key for t in tasks}


# -- search -----------------------------------------------------------------------------------
@pytest.mark.parametrize("isa", list(PROFILES))
def test_scripted_search_measures_the_fallback_first_and_stays_in_budget(isa: str, tmp_path: Path) -> None:
    """At every ISA level (its kernels' configuration spaces; the scripted runner builds nothing)."""
    features = PROFILES[isa]
    tasks = extract_tasks(prepare(MODEL), ["w8a8", "w4a8", "fp32", "bf16"], features)
    db = TuningDatabase(tmp_path / "db.jsonl")
    m = ScriptedMeasurer(_synthetic_us)
    s = tune(tasks, db, m, features, trials=10, progress=False)
    assert m.calls == len(db) == _expected_total(tasks, 10, features)
    for r in s.results:
        recs = db.query(r.task.key, r.task.spec, "scripted")
        search = [x for x in recs if not x.playoff]
        if r.task.kind == "kernel":
            key = registry.KernelKey.parse(r.task.kernel)  # what a build for this CPU would run
            assert registry.select_for(r.task.workload, r.task.spec, features).key == key
            fb = registry.get(registry.KernelKey.parse(r.task.kernel)).fallback_config(r.task.workload, features)
            assert recs[0].config == space.config_to_json(fb)
            assert r.fallback_us == recs[0].min_us
            played = [x for x in recs if x.playoff]  # the fallback and the three fastest others
            top = sorted({x.config_id: x.min_us for x in search}.items(), key=lambda kv: (kv[1], kv[0]))
            want = {recs[0].config_id} | {c for c, _ in [kv for kv in top if kv[0] != recs[0].config_id][:3]}
            assert {x.config_id for x in played} == (want if len(search) > 1 else set())
            assert all(sum(x.config_id == c for x in played) == PLAYOFF_ROUNDS for c in {x.config_id for x in played})
        assert len({x.config_id for x in search}) == len(search)  # nothing searched twice
        assert r.best_us == min(x.min_us for x in recs)
    # a second run with the same database measures nothing
    m2 = ScriptedMeasurer(_synthetic_us)
    s2 = tune(tasks, db, m2, features, trials=10, progress=False)
    assert m2.calls == 0 and all(r.status == "cached" for r in s2.results)


def test_search_is_deterministic_with_a_seed(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, tasks = fmnist_tasks
    kernels = [t for t in tasks if t.kind == "kernel"]

    def run(seed: int, name: str) -> list[str]:
        db = TuningDatabase(tmp_path / name)
        tune(kernels, db, ScriptedMeasurer(_synthetic_us), FEATURES, trials=12, seed=seed, progress=False)
        return [r.task + r.config_id for r in db]

    assert run(0, "a.jsonl") == run(0, "b.jsonl")
    assert run(0, "a2.jsonl") != run(1, "c.jsonl")


def test_failed_candidates_are_recorded_and_never_chosen(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, tasks = fmnist_tasks
    task = next(t for t in tasks if t.kind == "kernel" and t.spec == "w8a8")
    fails = {"n": 0}

    def flaky(t, cfg):  # type: ignore[no-untyped-def]
        fails["n"] += 1
        return None if fails["n"] % 2 == 0 else _synthetic_us(t, cfg)

    db = TuningDatabase(None)
    s = tune([task], db, ScriptedMeasurer(flaky), FEATURES, trials=8, progress=False)
    bad = [r for r in db if not r.ok]
    assert bad and all(r.error == "scripted failure" for r in bad)
    assert s.results[0].best_us == min(r.min_us for r in db if r.ok)


def test_interrupted_search_resumes_to_the_same_total(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, tasks = fmnist_tasks

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def dies(task, cfg):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 25:
            raise Killed()
        return _synthetic_us(task, cfg)

    db = TuningDatabase(tmp_path / "db.jsonl")
    with pytest.raises(Killed):
        tune(tasks, db, ScriptedMeasurer(dies), FEATURES, trials=6, progress=False)
    kept = len(TuningDatabase(tmp_path / "db.jsonl"))
    assert 0 < kept <= 25
    m = ScriptedMeasurer(_synthetic_us)
    tune(tasks, TuningDatabase(tmp_path / "db.jsonl"), m, FEATURES, trials=6, progress=False)
    final = TuningDatabase(tmp_path / "db.jsonl")
    assert len(final) == kept + m.calls == _expected_total(tasks, 6)
    assert len({(r.task, r.config_id) for r in final if not r.playoff}) == _expected_total(tasks, 6, playoff=False)


# -- latency table and predictor ---------------------------------------------------------------
def test_latency_table_measured_predicted_and_boundaries(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pm, tasks = fmnist_tasks
    db = TuningDatabase(None)
    measured = [t for t in tasks if t.layers[0] != pm.layers.layers[-1].name or t.kind == "conversion"]
    tune(measured, db, ScriptedMeasurer(_synthetic_us), FEATURES, trials=8, progress=False)
    table = LatencyTable.from_database(db, "scripted", tasks=tasks, features=FEATURES)
    first, last = pm.layers.layers[0].name, pm.layers.layers[-1].name
    assert table.layers[first]["w8a8"]["source"] == "measured"
    assert table.layers[first]["w8a8"]["us"] == min(r.median_us for r in db.query(
        table.layers[first]["w8a8"]["task"], "w8a8", "scripted"))
    assert table.layers[last]["w8a8"]["source"] == "predicted" and table.layers[last]["w8a8"]["us"] > 0
    # boundaries: float -> int quantizes, int -> float dequantizes, int -> int is free
    assert conversion_for("fp32", "w8a8") == "quantize_u8" and conversion_for("w8a8", "bf16") == "dequantize_u8"
    assert conversion_for("w8a8", "w8a16") is None and conversion_for("fp32", "bf16") is None
    second = pm.layers.layers[1].name
    assert table.boundary_us(second, "fp32", "w8a8") == table.conversions[second]["quantize_u8"]["us"] > 0
    assert table.boundary_us(second, "w8a8", "w4a8") == 0.0
    plan = {l.name: "w8a8" for l in pm.layers}
    plan[first] = "fp32"
    total = table.total_us(plan, [(first, second)])
    assert total == pytest.approx(sum(table.latency_us(l, s) for l, s in plan.items())
                                  + table.boundary_us(second, "fp32", "w8a8"))
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").layers == table.layers
    with pytest.raises(Exception, match="no record"):
        LatencyTable.from_database(db, "scripted", tasks=tasks, features=FEATURES, predict=False)


def test_predictor_learns_a_smooth_latency_model(fmnist_tasks) -> None:  # type: ignore[no-untyped-def]
    _, tasks = fmnist_tasks
    db = TuningDatabase(None)
    tune([t for t in tasks if t.kind == "kernel"], db, ScriptedMeasurer(_synthetic_us), FEATURES,
         trials=30, progress=False)
    fit = LatencyPredictor(0).fit(db.records)
    pred = fit.predict_records(db.records)
    actual = np.array([r.median_us for r in db])
    assert np.median(np.abs(pred - actual) / actual) < 0.1  # it fits what it saw
    err = LatencyPredictor.evaluate(db.records, seed=0)
    assert err["n_test"] > 0 and np.isfinite(err["median_ape"])


# -- real measurements --------------------------------------------------------------------------
def _w8a8_pointwise_task(tasks):  # type: ignore[no-untyped-def]
    return next(t for t in tasks if t.kind == "kernel" and t.spec == "w8a8"
                and t.workload.kernel_h == 1 and not t.workload.is_depthwise)


def test_playoff_overrules_a_lucky_search_measurement(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A configuration measured once in a quiet moment (half the fallback's time) but slower side
    by side loses the playoff: the database's best is the fallback, though the search alone would
    have crowned the lucky one."""
    _, tasks = fmnist_tasks
    task = next(t for t in tasks if t.kind == "kernel" and t.spec == "w8a8")
    fb = registry.get(registry.KernelKey.parse(task.kernel)).fallback_config(task.workload, FEATURES)
    seen: dict[str, int] = {}
    lucky: list[str] = []

    def noisy(t, cfg):  # type: ignore[no-untyped-def]
        cid = json.dumps(space.config_to_json(cfg), sort_keys=True)
        seen[cid] = seen.get(cid, 0) + 1
        if cfg == fb:
            return 100.0
        if not lucky:
            lucky.append(cid)  # the first other candidate: lucky once, 20% slower ever after
        if cid == lucky[0]:
            return 50.0 if seen[cid] == 1 else 120.0
        return 150.0

    db = TuningDatabase(tmp_path / "db.jsonl")
    s = tune([task], db, ScriptedMeasurer(noisy), FEATURES, trials=6, progress=False)
    search = [r for r in db if not r.playoff]
    assert min(search, key=lambda r: r.min_us).config_id == lucky[0]  # what the minimum alone picks
    assert seen[lucky[0]] == 1 + PLAYOFF_ROUNDS
    best = db.best(task.key, task.spec, "scripted")
    assert best is not None and best.config == space.config_to_json(fb) and best.playoff
    assert db.ranked_us(task.key, task.spec, "scripted")[lucky[0]] == 120.0
    assert s.results[0].best_us == s.results[0].fallback_us == 100.0


def test_playoff_includes_a_fallback_the_search_never_measured(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A database written before the kernel's fallback changed holds no record of today's
    fallback: the search, its budget spent, measures nothing, and the playoff still sets the
    fallback beside the three fastest others, side by side (its rounds with theirs)."""
    _, tasks = fmnist_tasks
    task = next(t for t in tasks if t.kind == "kernel" and t.spec == "w8a8")
    fb = registry.get(registry.KernelKey.parse(task.kernel)).fallback_config(task.workload, FEATURES)
    others = [c for c in space.config_space(fb, task.workload, FEATURES) if c != fb][:4]
    db = TuningDatabase(tmp_path / "db.jsonl")
    m = ScriptedMeasurer(lambda t, cfg: 100.0 if cfg == fb else _synthetic_us(t, cfg))
    for cfg, res in zip(others, m.measure(task, others)):  # an older search: every trial but the fallback
        db.append(TuningRecord(task=task.key, kernel=task.kernel, spec=task.spec, workload=task.workload_json(),
                               config=space.config_to_json(cfg), latency=res.latency, device=m.device))
    m.calls = 0
    tune([task], db, m, FEATURES, trials=4, progress=False)
    played = [r for r in db if r.playoff]
    assert m.calls == len(played) == PLAYOFF_ROUNDS * PLAYOFF_SIZE
    fb_id = json.dumps(space.config_to_json(fb), sort_keys=True)
    assert [r.latency["playoff"] for r in played if r.config_id == fb_id] == [1, 2, 3]
    assert [r.config_id for r in played][:PLAYOFF_SIZE][0] == fb_id  # the first round starts with it


def test_real_tuning_run_then_compile_uses_it_bit_exactly(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import tvmq
    from tvmq.calibration import collect

    pm, tasks = fmnist_tasks
    task = _w8a8_pointwise_task(tasks)
    db = TuningDatabase(tmp_path / "db.jsonl")
    m = RunnerMeasurer(FEATURES, threads=1, repeat=3, min_repeat_ms=5)
    try:
        s = tune([task], db, m, FEATURES, trials=4, progress=False)
    finally:
        m.close()
    recs = db.query(task.key, "w8a8", m.device["id"])
    assert len(recs) == 4 + PLAYOFF_ROUNDS * 4 and sum(r.playoff for r in recs) == PLAYOFF_ROUNDS * 4
    assert all(r.ok and r.latency["median_us"] > 0 and r.latency["n"] == 3 for r in recs)
    assert recs[0].device["cpu"] and recs[0].tvm and recs[0].tvmq == tvmq.__version__
    best = s.results[0]
    assert best.best_us <= best.fallback_us

    # make the tuned record a configuration that is not the fallback, then compile with it
    fb = registry.get(registry.KernelKey.parse(task.kernel)).fallback_config(task.workload, FEATURES)
    other = next(c for c in space.config_space(fb, task.workload, FEATURES) if c != fb)
    db.append(TuningRecord(task=task.key, kernel=task.kernel, spec="w8a8", workload=task.workload_json(),
                           config=space.config_to_json(other), device=m.device,
                           latency={"median_us": 1e-3, "min_us": 1e-3, "n": 1, "spread": 0.0, "playoff": 1}))
    x, _ = fmnist_inputs(20)
    stats = collect(MODEL, x[:10], features=FEATURES)
    plain = tvmq.build(MODEL, tmp_path / "plain", plan="w8a8", stats=stats, features=FEATURES)
    tuned = tvmq.build(MODEL, tmp_path / "tuned", plan="w8a8", stats=stats, features=FEATURES,
                       db=tmp_path / "db.jsonl")
    kern = tuned.manifest_data["kernels"][task.layers[0]]
    assert kern["config_source"] == "tuned" and kern["config"] == {k: v for k, v in space.config_to_json(other).items()
                                                                   if k != "type"}
    assert tuned.manifest_data["tuning"]["layers"]["tuned"] == 1
    assert plain.manifest_data["kernels"][task.layers[0]]["config_source"] == "fallback"
    a, b = tvmq.load(plain.library), tvmq.load(tuned.library)
    for i in range(len(x)):
        ya, yb = a.run({"input": x[i:i + 1]}), b.run({"input": x[i:i + 1]})
        np.testing.assert_array_equal(list(ya.values())[0], list(yb.values())[0])  # integer model: exact


def test_kill_9_mid_tuning_then_rerun_completes_the_same_total(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pm, _ = fmnist_tasks
    tasks = extract_tasks(pm, ["w8a8"], FEATURES)
    expected = _expected_total(tasks, 3)
    db = tmp_path / "db.jsonl"
    cmd = [sys.executable, "-m", "tvmq", "tune", str(MODEL), "--specs", "w8a8", "--trials", "3",
           "--db", str(db), "-q"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if db.exists() and len(db.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    assert p.poll() is None, "tuning finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the kill may cut the last line
        kept = TuningDatabase(db)
    assert 5 <= len(kept) < expected
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = TuningDatabase(db)
    assert len(final) == expected
    assert [x.to_json() for x in final.records[: len(kept)]] == [x.to_json() for x in kept.records]
    assert len({(x.task, x.config_id) for x in final if not x.playoff}) == _expected_total(tasks, 3, playoff=False)
    assert "new measurements" in r.stdout


@pytest.mark.skipif(not FEATURES.amx_int8, reason=skip_reason("amx"))
def test_an_rpc_server_without_the_amx_permission_fails_the_candidates_instead_of_hanging(
        fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """TVM's own server: its session process dies on the first AMX instruction (SIGILL) and keeps
    the session open; every candidate fails within the deadline, naming the server to use."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    _, tasks = fmnist_tasks
    task = _w8a8_pointwise_task(tasks)
    kernel = registry.get(registry.KernelKey.parse(task.kernel))
    amx = [c for c in kernel.tuning_space(task.workload, FEATURES) if c.dot == "tvmq_amx"][:2]
    assert len(amx) == 2  # (on an AMX target every conv's space holds AMX tiles)
    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, key="tvmq-noperm",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        m = RunnerMeasurer(FEATURES, threads=1, rpc=("127.0.0.1", tracker.port, "tvmq-noperm"),
                           repeat=3, min_repeat_ms=5, timeout_s=5)
        t0 = time.monotonic()
        try:
            results = m.measure(task, amx)
        finally:
            m.close()
        assert time.monotonic() - t0 < 120
        assert len(results) == 2 and all(r.latency is None for r in results)
        assert all("python -m tvmq.tune.rpc_server" in r.error for r in results), [r.error for r in results]
    finally:
        server.terminate()
        tracker.terminate()


def test_rpc_tracker_and_server_on_localhost(fmnist_tasks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    from tvmq.tune import rpc_server

    _, tasks = fmnist_tasks
    task = _w8a8_pointwise_task(tasks)  # (on an AMX host its candidates may be AMX tiles: the permission)
    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc_server.start("127.0.0.1", 9300, 9400, ("127.0.0.1", tracker.port), "tvmq-test")
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            summary = rpc.connect_tracker("127.0.0.1", tracker.port).summary()
            if any(q.get("free", 0) for q in summary["queue_info"].values()):
                break
            time.sleep(0.5)
        db = TuningDatabase(tmp_path / "db.jsonl")
        m = RunnerMeasurer(FEATURES, threads=1, rpc=("127.0.0.1", tracker.port, "tvmq-test"),
                           repeat=3, min_repeat_ms=5)
        try:
            tune([task], db, m, FEATURES, trials=2, progress=False)
        finally:
            m.close()
        assert len(db) == 2 + 2 * PLAYOFF_ROUNDS and all(r.ok for r in db), [r.error for r in db]
        assert db.records[0].device["rpc_key"] == "tvmq-test"
    finally:
        server.terminate()
        tracker.terminate()


def test_cli_tune_rejects_bad_arguments(tmp_path: Path) -> None:
    for args, msg in ((["--specs", "w3a3"], "--specs"), (["--trials", "0"], "--trials"),
                      (["--rpc", "nohost"], "--rpc")):
        r = subprocess.run([sys.executable, "-m", "tvmq", "tune", str(MODEL), "--db", str(tmp_path / "d.jsonl"),
                            *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_tuned_configs_ignore_a_record_of_another_configuration_kind(tmp_path: Path) -> None:
    """A W4A8 record whose configuration is not a W4A8Config (a database written before the W4A8
    kernels took one) never reaches a W4A8 kernel: the chooser falls back instead."""
    from schedules.packing import W4A8Config
    from schedules.workload import DenseWorkload
    from tvmq.tune.tasks import kernel_task_key, workload_to_json
    from tvmq.tune.tuner import TunedConfigs

    wl = DenseWorkload(1, 64, 24)
    kernel = registry.select("dense", "w4a8", FEATURES)
    fb = kernel.fallback_config(wl, FEATURES)
    device = device_fingerprint(FEATURES, threads=1)
    db = TuningDatabase(tmp_path / "db.jsonl")
    lat = {"median_us": 1.0, "min_us": 1.0, "n": 1, "spread": 0.0}
    db.append(TuningRecord(task=kernel_task_key(kernel, wl, FEATURES), kernel=str(kernel.key), spec="w4a8",
                           workload=workload_to_json(wl), config=space.config_to_json(fb.base),
                           latency=lat, device=device))
    chooser = TunedConfigs(db, FEATURES, device["id"])
    assert chooser(kernel, wl, "fc") == (fb, "fallback")
    block = W4A8Config(fb.base, "block")
    db.append(TuningRecord(task=kernel_task_key(kernel, wl, FEATURES), kernel=str(kernel.key), spec="w4a8",
                           workload=workload_to_json(wl), config=space.config_to_json(block),
                           latency={**lat, "median_us": 0.5, "min_us": 0.5}, device=device))
    assert TunedConfigs(db, FEATURES, device["id"])(kernel, wl, "fc") == (block, "tuned")


def test_predictor_features_keep_their_columns() -> None:
    """The configuration types and knobs the latency predictor reads come from the kernel
    registry, each once; those of the committed tuning databases keep their relative order (the
    order of ``registry.KERNEL_MODULES``), and a configuration sets its own type's one-hot column."""
    types = ["Conv2dConfig", "PointwiseConfig", "DotConv2dConfig", "PointwiseDotConfig", "Bf16DotConv2dConfig",
             "Bf16DenseConfig", "DepthwiseConfig", "DenseConfig"]
    knobs = ["ic_bn", "oc_bn", "reg_n", "k_tile", "p_tile", "lanes", "unroll_c", "pad_vectorize"]
    assert len(set(predictor.CONFIG_TYPES)) == len(predictor.CONFIG_TYPES)
    assert len(set(predictor.KNOBS)) == len(predictor.KNOBS)
    assert [t for t in predictor.CONFIG_TYPES if t in types] == types
    assert [k for k in predictor.KNOBS if k in knobs] == knobs
    wl = {"op": "dense", "batch": 1, "in_features": 64, "out_features": 32,
          "epilogue": {"bias": True, "activation": "none", "residual": False, "out_float": False}}
    first = len(predictor.OPS) + len(predictor.SPECS) + len(predictor.ISAS)
    for i, name in enumerate(predictor.CONFIG_TYPES):
        row = predictor.feature_vector("dense/fp32/generic", "fp32", wl, {"type": name, "oc_bn": 16})
        onehot = row[first:first + len(predictor.CONFIG_TYPES)]
        assert onehot == [float(j == i) for j in range(len(predictor.CONFIG_TYPES))]


def test_fp32_tasks_cover_the_plain_fp32_build_and_its_tuned_configs_apply(tmp_path: Path) -> None:
    """``extract_tasks(["fp32"])`` has the channels-last workloads a plain fp32 build compiles
    (beside the NCHW ones of mixed plans' fp32 layers): a tuned record of one reaches that build."""
    import tvmq
    from tvmq.tune.tasks import workload_to_json

    pm = prepare(MODEL)
    tasks = [t for t in extract_tasks(pm, ["fp32"], FEATURES, conversions=False) if t.kind == "kernel"]
    convs = [t for t in tasks if t.kernel.startswith("conv2d/")]
    assert {t.workload.layout for t in convs} == {"NCHW", "NHWC"}
    task = next(t for t in convs if t.workload.layout == "NHWC")
    kernel = registry.get(registry.KernelKey.parse(task.kernel))
    fb = kernel.fallback_config(task.workload, FEATURES)
    other = next(c for c in space.config_space(fb, task.workload, FEATURES) if c != fb)
    device = device_fingerprint(FEATURES, threads=1)
    db = TuningDatabase(tmp_path / "db.jsonl")
    db.append(TuningRecord(task=task.key, kernel=task.kernel, spec="fp32", workload=workload_to_json(task.workload),
                           config=space.config_to_json(other), device=device,
                           latency={"median_us": 1e-3, "min_us": 1e-3, "n": 1, "spread": 0.0}))
    built = tvmq.build(MODEL, tmp_path / "fp32", features=FEATURES, db=tmp_path / "db.jsonl")
    kern = built.manifest_data["kernels"][task.layers[0]]
    assert kern["layout"] == "NHWC" and kern["config_source"] == "tuned", kern


def test_narrow_weight_tasks_are_the_workloads_a_narrow_build_compiles() -> None:
    """``extract_tasks(narrow_weights=True)``: every ungrouped W8A8 conv task is a
    ``narrow_weights`` workload (on AVX2 its fallback takes ``vpmaddubsw``), as in a build with
    the recipe's narrow weights, so ``tvmq tune --narrow-weights`` records match that build."""
    features = PROFILES["avx2"]
    pm = prepare(MODEL)
    narrow = [t for t in extract_tasks(pm, ["w8a8"], features, narrow_weights=True, conversions=False)
              if t.kind == "kernel" and t.kernel.startswith("conv2d/")]
    assert narrow and all(t.workload.narrow_weights for t in narrow)
    assert {registry.get(registry.KernelKey.parse(t.kernel)).fallback_config(t.workload, features).dot
            for t in narrow} == {"tvmq_pmaddubsw_8x4"}
    plain = [t for t in extract_tasks(pm, ["w8a8"], features, conversions=False)
             if t.kind == "kernel" and t.kernel.startswith("conv2d/")]
    assert plain and any(not t.workload.narrow_weights for t in plain)
