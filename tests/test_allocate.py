"""Allocation: the MILP against brute force on small random problems, every budget type,
ties, boundary conversions, infeasible budgets, the Pareto front, the greedy path, solve time."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from tvmq.allocate import AllocationProblem, Option, allocate, brute_force, greedy_pareto, pareto_front
from tvmq.errors import TvmqError

SPECS = ("w4a8", "w8a8", "fp32")


def random_problem(rng: np.random.Generator, n: int, specs=SPECS, boundaries: bool = False,
                   ties: bool = False) -> AllocationProblem:
    options = {}
    for i in range(n):
        macs = float(rng.integers(1, 100))
        # lower precision: more sensitive, faster, smaller (with noise, so not always)
        options[f"l{i}"] = {
            "w4a8": Option(float(rng.uniform(0.2, 1.0)), macs * rng.uniform(0.4, 0.9), macs * 0.5, macs * 32),
            "w8a8": Option(float(rng.uniform(0.01, 0.3)), macs * rng.uniform(0.5, 1.1), macs, macs * 64),
            "fp32": Option(0.0, macs * rng.uniform(0.9, 1.5), macs * 4, macs * 1024),
        }
        options[f"l{i}"] = {s: options[f"l{i}"][s] for s in specs}
    bnd = {}
    if boundaries:
        for i in range(n - 1):
            bnd[(f"l{i}", f"l{i + 1}")] = {(a, b): float(rng.uniform(0, 5)) for a in specs for b in specs if a != b}
    tie = [("l0", f"l{n - 1}")] if ties else []
    return AllocationProblem(options, ties=tie, boundaries=bnd)


def _with(p: AllocationProblem, **budgets) -> AllocationProblem:  # type: ignore[no-untyped-def]
    return AllocationProblem(p.options, ties=p.ties, boundaries=p.boundaries, **budgets)


@pytest.mark.parametrize("seed", range(12))
def test_milp_equals_brute_force_under_every_budget_type(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = random_problem(rng, int(rng.integers(3, 8)), boundaries=seed % 2 == 1, ties=seed % 3 == 0)
    lo = {b: min(base.totals(dict(zip(base.options, c)))[b]
                 for c in itertools.product(*(list(v) for v in base.options.values())))
          for b in ("latency", "size", "bops")}
    fp32 = base.totals({l: "fp32" for l in base.options})
    for budget in ("latency", "size", "bops"):
        for frac in (0.3, 0.6, 0.9):
            limit = lo[budget] + frac * (fp32[budget] - lo[budget])
            p = _with(base, **{f"{budget}_budget": limit})
            got, want = allocate(p), brute_force(p)
            assert want is not None and got.status == "optimal"
            assert p.feasible(got.plan)
            assert got.totals["sensitivity"] == pytest.approx(want.totals["sensitivity"], abs=1e-9)
    # all three at once
    p = _with(base, latency_budget=lo["latency"] + 0.5 * (fp32["latency"] - lo["latency"]),
              size_budget=lo["size"] + 0.7 * (fp32["size"] - lo["size"]),
              bops_budget=lo["bops"] + 0.8 * (fp32["bops"] - lo["bops"]))
    got, want = allocate(p), brute_force(p)
    if want is None:
        assert got.status == "infeasible"
    else:
        assert got.totals["sensitivity"] == pytest.approx(want.totals["sensitivity"], abs=1e-9)


def test_ties_are_respected_and_binding_budget_is_named() -> None:
    p = random_problem(np.random.default_rng(3), 6, ties=True)
    fast = p.totals({l: "w4a8" for l in p.options})["latency"]
    slow = p.totals({l: "fp32" for l in p.options})["latency"]
    r = allocate(_with(p, latency_budget=(fast + slow) / 2, size_budget=1e12))
    assert r.plan["l0"] == r.plan["l5"]
    assert r.binding == ["latency"]  # the huge size budget does not bind
    free = allocate(p)
    assert free.binding == [] and set(free.plan.values()) == {"fp32"}


def test_infeasible_budget_returns_least_overrun_plan() -> None:
    p = random_problem(np.random.default_rng(5), 5)
    fastest = min(p.totals(dict(zip(p.options, c)))["latency"]
                  for c in itertools.product(*(list(v) for v in p.options.values())))
    r = allocate(_with(p, latency_budget=0.5 * fastest))
    assert r.status == "infeasible" and r.violated == ["latency"]
    assert r.totals["latency"] == pytest.approx(fastest)  # the fastest plan: least overrun


def test_pareto_front_is_non_dominated_and_matches_brute_force() -> None:
    p = random_problem(np.random.default_rng(8), 6, boundaries=True)
    front = pareto_front(p, points=60)
    assert len(front) >= 3
    lats = [q.latency for q in front]
    sens = [q.sensitivity for q in front]
    assert lats == sorted(lats) and sens == sorted(sens, reverse=True)
    everything = [p.totals(dict(zip(p.options, c))) for c in
                  itertools.product(*(list(v) for v in p.options.values()))]
    for q in front:  # nothing strictly better on both axes exists
        assert not any(t["latency"] < q.latency - 1e-9 and t["sensitivity"] < q.sensitivity - 1e-9
                       for t in everything)
    # the ends are the fastest plan and the least sensitive one
    assert front[0].latency == pytest.approx(min(t["latency"] for t in everything))
    assert front[-1].sensitivity == pytest.approx(min(t["sensitivity"] for t in everything))


def test_greedy_path_goes_from_least_sensitive_to_faster() -> None:
    p = random_problem(np.random.default_rng(9), 7, ties=True)
    path = greedy_pareto(p)
    assert path[-1].sensitivity == pytest.approx(0.0)  # all fp32 at the slow end
    for a, b in zip(path, path[1:]):
        assert a.latency < b.latency and a.sensitivity > b.sensitivity
    exact = pareto_front(p, points=40)
    # the exact front is never worse than greedy at greedy's latencies
    for q in path:
        best = min((e.sensitivity for e in exact if e.latency <= q.latency + 1e-9), default=np.inf)
        assert best <= q.sensitivity + 1e-9


def test_bad_problems_are_clear_errors() -> None:
    with pytest.raises(TvmqError, match="without layers"):
        AllocationProblem({})
    with pytest.raises(TvmqError, match="non-finite"):
        AllocationProblem({"a": {"w8a8": Option(float("nan"))}})
    with pytest.raises(TvmqError, match="unknown layer"):
        AllocationProblem({"a": {"w8a8": Option(0.1)}}, ties=[("a", "b")])
    with pytest.raises(TvmqError, match="different candidate specs"):
        AllocationProblem({"a": {"w8a8": Option(0.1)}, "b": {"fp32": Option(0.0)}}, ties=[("a", "b")])


def test_mobilenetv2_sized_problem_solves() -> None:
    """53 layers x 5 specs, every budget, boundary conversions, ties. Solve time is reported
    (pytest -s), not asserted: timing asserts do not belong in unit tests."""
    rng = np.random.default_rng(0)
    specs = ("w4a8", "w8a8", "fp32")
    base = random_problem(rng, 53, specs=specs, boundaries=True)
    options = {l: {**v, "w8a16": Option(v["w8a8"].sensitivity / 4, v["w8a8"].latency * 1.3,
                                        v["w8a8"].size, v["w8a8"].bops * 2),
                   "bf16": Option(v["fp32"].sensitivity + 1e-4, v["fp32"].latency * 0.8,
                                  v["fp32"].size / 2, v["fp32"].bops / 4)}
               for l, v in base.options.items()}
    p = AllocationProblem(options, boundaries=base.boundaries, ties=[("l3", "l7"), ("l10", "l20")])
    fast = p.totals({l: "w4a8" for l in p.options})
    slow = p.totals({l: "fp32" for l in p.options})
    budgeted = _with(p, latency_budget=(fast["latency"] + slow["latency"]) / 2,
                     size_budget=0.6 * slow["size"], bops_budget=0.7 * slow["bops"])
    t = time.perf_counter()
    r = allocate(budgeted)
    print(f"53 layers x 5 specs: solved in {time.perf_counter() - t:.2f}s")
    assert r.status == "optimal" and budgeted.feasible(r.plan)
    assert r.plan["l3"] == r.plan["l7"] and len(set(r.plan.values())) >= 2
