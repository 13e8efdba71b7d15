"""Bit-width allocation: one spec per layer, least total sensitivity under budgets.

Pure functions over an ``AllocationProblem`` (no compiler state), so they are tested exactly
against brute force and reused by the CLI, the report and the Pareto search::

    problem = AllocationProblem(
        options={"conv1": {"w8a8": Option(sensitivity=0.02, latency=0.31, size=4608, bops=...),
                           "w4a8": Option(0.40, 0.25, 2304, ...), "fp32": Option(0.0, 0.52, ...)},
                 ...},
        latency_budget=3.5, size_budget=None, bops_budget=None,
        ties=[("conv_a", "conv_b")],                      # these layers take the same spec
        boundaries={("conv1", "conv2"): {("w8a8", "fp32"): 0.01, ...}})  # format conversions
    result = allocate(problem)        # exact: an integer program (scipy's HiGHS MILP)
    result.plan, result.status, result.binding, result.totals
    front = pareto_front(problem)     # sensitivity vs latency, every budget swept
    path = greedy_pareto(problem)     # the second method: one downgrade at a time

Model: binary ``x[l, s]`` (layer ``l`` takes spec ``s``), ``sum_s x[l, s] = 1``; objective
``sum sensitivity[l, s] x[l, s]``; budgets ``sum cost[l, s] x[l, s] (+ boundary terms) <= B``;
a boundary cost ``c[(a, b), (s, t)]`` (latency of converting ``a``'s output format ``s`` into
``b``'s input format ``t``) enters the latency budget through ``z >= x[a, s] + x[b, t] - 1``;
ties are ``x[a, s] = x[b, s]``.

The allocator never returns nothing: with infeasible budgets it returns the plan that
minimises the largest budget overrun ratio (status ``"infeasible"``, ``violated`` names them);
``binding`` names the budgets whose removal would lower the objective.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import TvmqError

BUDGETS = ("latency", "size", "bops")


@dataclass(frozen=True)
class Option:
    """What choosing one spec for one layer costs (sensitivity: lower is better)."""

    sensitivity: float
    latency: float = 0.0
    size: float = 0.0
    bops: float = 0.0


@dataclass
class AllocationProblem:
    options: Mapping[str, Mapping[str, Option]]  # layer -> spec -> Option (the candidate specs)
    latency_budget: float | None = None
    size_budget: float | None = None
    bops_budget: float | None = None
    ties: Sequence[Sequence[str]] = ()
    boundaries: Mapping[tuple[str, str], Mapping[tuple[str, str], float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.options:
            raise TvmqError("allocation problem without layers")
        for layer, specs in self.options.items():
            if not specs:
                raise TvmqError(f"layer {layer!r} has no candidate spec")
            for spec, opt in specs.items():
                values = (opt.sensitivity, opt.latency, opt.size, opt.bops)
                if not all(np.isfinite(v) for v in values):
                    raise TvmqError(f"layer {layer!r} spec {spec!r}: non-finite cost {opt}")
        for group in self.ties:
            missing = [l for l in group if l not in self.options]
            if missing:
                raise TvmqError(f"tie names unknown layer(s) {missing}")
            first = set(self.options[group[0]])
            for l in group[1:]:
                if set(self.options[l]) != first:
                    raise TvmqError(f"tied layers {group[0]!r} and {l!r} have different candidate specs")
        for (a, b), costs in self.boundaries.items():
            if a not in self.options or b not in self.options:
                raise TvmqError(f"boundary ({a!r}, {b!r}) names an unknown layer")
            for (s, t) in costs:
                if s not in self.options[a] or t not in self.options[b]:
                    raise TvmqError(f"boundary ({a!r}, {b!r}) names a spec pair {(s, t)} they cannot take")

    def budget(self, name: str) -> float | None:
        return getattr(self, f"{name}_budget")

    def totals(self, plan: Mapping[str, str]) -> dict[str, float]:
        """Sensitivity, latency (boundary conversions included), size and BOPs of a plan."""
        out = {"sensitivity": 0.0, "latency": 0.0, "size": 0.0, "bops": 0.0}
        for layer, spec in plan.items():
            opt = self.options[layer][spec]
            out["sensitivity"] += opt.sensitivity
            out["latency"] += opt.latency
            out["size"] += opt.size
            out["bops"] += opt.bops
        for (a, b), costs in self.boundaries.items():
            out["latency"] += costs.get((plan[a], plan[b]), 0.0)
        return out

    def feasible(self, plan: Mapping[str, str], tol: float = 1e-9) -> bool:
        t = self.totals(plan)
        ties_ok = all(len({plan[l] for l in group}) == 1 for group in self.ties)
        return ties_ok and all(self.budget(b) is None or t[b] <= self.budget(b) * (1 + tol) + tol
                               for b in BUDGETS)


@dataclass
class Allocation:
    plan: dict[str, str]
    status: str  # "optimal" | "infeasible" (then the least-overrun plan)
    totals: dict[str, float]
    binding: list[str]  # budgets whose removal would lower the total sensitivity
    violated: list[str]  # budgets the plan exceeds (only when infeasible)
    solve_seconds: float


class _Model:
    """The MILP's matrices for one problem (variables: x[l, s] binaries, then z boundary terms)."""

    def __init__(self, p: AllocationProblem) -> None:
        self.p = p
        self.index: dict[tuple[str, str], int] = {}
        for layer, specs in p.options.items():
            for spec in specs:
                self.index[(layer, spec)] = len(self.index)
        self.nx = len(self.index)
        self.z: list[tuple[tuple[str, str], tuple[str, str], float]] = [
            ((a, b), st, c) for (a, b), costs in p.boundaries.items() for st, c in costs.items() if c != 0]
        self.n = self.nx + len(self.z)

    def cost_row(self, name: str) -> np.ndarray:
        row = np.zeros(self.n)
        for (layer, spec), i in self.index.items():
            row[i] = getattr(self.p.options[layer][spec], name)
        if name == "latency":
            for k, (_, _, c) in enumerate(self.z):
                row[self.nx + k] = c
        return row

    def structural(self):  # type: ignore[no-untyped-def]
        """(A, lo, hi) of: one spec per layer, ties, boundary linearisation."""
        from scipy.sparse import lil_matrix  # (deferred: scipy loads only when a plan is solved)

        rows: list[tuple[dict[int, float], float, float]] = []
        for layer, specs in self.p.options.items():
            rows.append(({self.index[(layer, s)]: 1.0 for s in specs}, 1.0, 1.0))
        for group in self.p.ties:
            for other in group[1:]:
                for s in self.p.options[group[0]]:
                    rows.append(({self.index[(group[0], s)]: 1.0, self.index[(other, s)]: -1.0}, 0.0, 0.0))
        for k, ((a, b), (s, t), _) in enumerate(self.z):
            # z >= x[a,s] + x[b,t] - 1  <=>  x[a,s] + x[b,t] - z <= 1
            rows.append(({self.index[(a, s)]: 1.0, self.index[(b, t)]: 1.0, self.nx + k: -1.0}, -np.inf, 1.0))
        a = lil_matrix((len(rows), self.n))
        lo, hi = np.empty(len(rows)), np.empty(len(rows))
        for r, (coefs, l, h) in enumerate(rows):
            for j, v in coefs.items():
                a[r, j] = v
            lo[r], hi[r] = l, h
        return a.tocsr(), lo, hi

    def plan_of(self, x: np.ndarray) -> dict[str, str]:
        plan: dict[str, str] = {}
        for layer, specs in self.p.options.items():
            plan[layer] = max(specs, key=lambda s: x[self.index[(layer, s)]])
        return plan


def _solve(m: _Model, objective: np.ndarray, budgets: Mapping[str, float],  # type: ignore[no-untyped-def]
           ratio_rows: np.ndarray | None = None, ratio_max: float = np.inf):
    """One MILP. With ``ratio_rows`` a last continuous variable ``r`` (in ``[0, ratio_max]``)
    joins, constrained by ``ratio_rows @ [x, z, r] <= 0``."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # (deferred: as above, ~0.3 s)
    from scipy.sparse import csr_matrix, hstack  # (deferred: as above)

    n = len(objective)
    a, lo, hi = m.structural()
    if n > m.n:
        a = hstack([a, csr_matrix((a.shape[0], n - m.n))]).tocsr()
    constraints = [LinearConstraint(a, lo, hi)]
    for name, limit in budgets.items():
        constraints.append(LinearConstraint(np.r_[m.cost_row(name), np.zeros(n - m.n)].reshape(1, -1),
                                            -np.inf, limit))
    if ratio_rows is not None:
        constraints.append(LinearConstraint(ratio_rows, -np.inf, 0.0))
    integrality = np.r_[np.ones(m.nx), np.zeros(n - m.nx)]
    upper = np.r_[np.ones(m.n), np.full(n - m.n, ratio_max)]
    return milp(objective, constraints=constraints, integrality=integrality,
                bounds=Bounds(np.zeros(n), upper), options={"disp": False})


def _active_budgets(p: AllocationProblem, skip: str | None = None) -> dict[str, float]:
    return {b: p.budget(b) for b in BUDGETS if p.budget(b) is not None and b != skip}  # type: ignore[misc]


def allocate(problem: AllocationProblem) -> Allocation:
    """The exact optimum (least total sensitivity within every budget), or, when no plan fits,
    the plan with the smallest largest overrun ratio (ties broken by sensitivity)."""
    t0 = time.perf_counter()
    m = _Model(problem)
    sens = m.cost_row("sensitivity")
    budgets = _active_budgets(problem)
    res = _solve(m, sens, budgets)
    if res.status == 0:
        plan = m.plan_of(res.x)
        best = problem.totals(plan)["sensitivity"]
        binding = []
        for b in budgets:  # does relaxing this budget buy anything?
            relaxed = _solve(m, sens, _active_budgets(problem, skip=b))
            if relaxed.status == 0 and relaxed.fun < best - 1e-9 * max(1.0, abs(best)):
                binding.append(b)
        return Allocation(plan, "optimal", problem.totals(plan), binding, [], time.perf_counter() - t0)
    if res.status != 2:  # not "infeasible": a solver failure
        raise TvmqError(f"the MILP solver failed: {res.message}")
    plan = _least_overrun(problem, m, budgets)
    totals = problem.totals(plan)
    violated = [b for b, limit in budgets.items() if totals[b] > limit * (1 + 1e-9) + 1e-12]
    return Allocation(plan, "infeasible", totals, [], violated, time.perf_counter() - t0)


def _least_overrun(p: AllocationProblem, m: _Model, budgets: Mapping[str, float]) -> dict[str, str]:
    """``min r`` s.t. ``cost_b(plan) <= r * B_b`` for every budget, then the least sensitivity
    among the plans at that ratio."""
    rows = np.array([np.r_[m.cost_row(name), -max(limit, 1e-12)] for name, limit in budgets.items()])
    res = _solve(m, np.r_[np.zeros(m.n), 1.0], {}, rows)
    if res.status != 0:
        raise TvmqError(f"the MILP solver failed: {res.message}")
    r = float(res.x[-1])
    again = _solve(m, np.r_[m.cost_row("sensitivity"), 0.0], {}, rows, r * (1 + 1e-9) + 1e-12)
    return m.plan_of(again.x if again.status == 0 else res.x)


@dataclass
class FrontPoint:
    latency: float
    sensitivity: float
    plan: dict[str, str]


def pareto_front(problem: AllocationProblem, points: int = 25) -> list[FrontPoint]:
    """Sensitivity vs latency: the exact optimum at ``points`` latency budgets spread between the
    fastest plan's and the least sensitive plan's latency (the other budgets of ``problem``
    apply), non-dominated points only, fastest first."""
    m = _Model(problem)
    others = _active_budgets(problem, skip="latency")
    fastest = _solve(m, m.cost_row("latency"), others)
    if fastest.status != 0:
        return []
    best = _solve(m, m.cost_row("sensitivity"), others)
    lat_lo = problem.totals(m.plan_of(fastest.x))["latency"]
    lat_hi = problem.totals(m.plan_of(best.x))["latency"]
    plans = [m.plan_of(fastest.x), m.plan_of(best.x)]
    for budget in np.linspace(lat_lo, lat_hi, points)[1:-1]:
        res = _solve(m, m.cost_row("sensitivity"), {**others, "latency": float(budget)})
        if res.status == 0:
            plans.append(m.plan_of(res.x))
    return _non_dominated(problem, plans)


def _non_dominated(problem: AllocationProblem, plans: list[dict[str, str]]) -> list[FrontPoint]:
    pts = []
    for plan in plans:
        t = problem.totals(plan)
        pts.append(FrontPoint(t["latency"], t["sensitivity"], plan))
    pts.sort(key=lambda q: (q.latency, q.sensitivity))
    front: list[FrontPoint] = []
    for q in pts:
        if not front or q.sensitivity < front[-1].sensitivity - 1e-12:
            front.append(q)
    return front


def greedy_pareto(problem: AllocationProblem) -> list[FrontPoint]:
    """The second method: start from the least sensitive spec per layer (tie groups together) and
    repeatedly take the change of one layer (or tie group) that saves latency at the smallest
    sensitivity cost per millisecond saved; every step is a point (non-dominated ones kept)."""
    groups: list[tuple[str, ...]] = [tuple(g) for g in problem.ties]
    tied = {l for g in groups for l in g}
    groups += [(l,) for l in problem.options if l not in tied]
    plan = {}
    for g in groups:
        spec = min(problem.options[g[0]], key=lambda s: sum(problem.options[l][s].sensitivity for l in g))
        plan.update({l: spec for l in g})
    visited = [dict(plan)]
    while True:
        base = problem.totals(plan)
        best_move, best_rate = None, np.inf
        for g in groups:
            for s in problem.options[g[0]]:
                if s == plan[g[0]]:
                    continue
                trial = {**plan, **{l: s for l in g}}
                t = problem.totals(trial)
                saved = base["latency"] - t["latency"]
                if saved <= 1e-12:
                    continue
                rate = (t["sensitivity"] - base["sensitivity"]) / saved
                if rate < best_rate:
                    best_move, best_rate = trial, rate
        if best_move is None:
            break
        plan = best_move
        visited.append(dict(plan))
    others = _active_budgets(problem, skip="latency")
    feasible = [p for p in visited if all(problem.totals(p)[b] <= v * (1 + 1e-9) for b, v in others.items())]
    return _non_dominated(problem, feasible)


def brute_force(problem: AllocationProblem) -> Allocation | None:
    """Every plan, for tests and tiny problems: the feasible optimum, or None."""
    layers = list(problem.options)
    best, best_s = None, np.inf
    for combo in itertools.product(*(list(problem.options[l]) for l in layers)):
        plan = dict(zip(layers, combo))
        if problem.feasible(plan):
            s = problem.totals(plan)["sensitivity"]
            if s < best_s - 1e-12:
                best, best_s = plan, s
    if best is None:
        return None
    return Allocation(best, "optimal", problem.totals(best), [], [], 0.0)
