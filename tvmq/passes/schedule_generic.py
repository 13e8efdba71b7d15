"""``ScheduleGeneric``: a real CPU schedule for every PrimFunc no kernel owns.

After ``LegalizeOps`` + ``FuseOps`` + ``FuseTIR`` the elementwise chains, pooling, reductions and
softmax are PrimFuncs (fused where ``FuseOps`` could) with naive single-threaded loops. This pass gives each of them a
schedule from its structure, without tuning:

* injective producers are inlined into their consumers;
* a purely spatial block keeps its loop nest: the innermost loop vectorised (``lanes``, or 8 / 4
  where it is not whole vectors of ``lanes``), the leading ones fused and run in parallel (when
  there is enough work to pay for waking the thread pool);
* a reduction block runs its leading spatial loops in parallel; one over the outer axes of a
  channels-last tensor (a pool, a mean over H and W) combines whole vectors of channels at each
  reduction step instead (vectors of ``lanes``, or 8 / 4 where the channels are not whole ones).

Functions already scheduled (``tirx.is_scheduled``, e.g. the ``schedules`` kernels) are left as
they are. A block this pass cannot schedule keeps its loops (correct, only slower).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

_MIN_PARALLEL_WORK = 4096  # output elements below which threading costs more than it saves


def _is_spatial(sch: s_tir.Schedule, block) -> bool:  # type: ignore[no-untyped-def]
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _extent(sch: s_tir.Schedule, loop) -> int | None:  # type: ignore[no-untyped-def]
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _inline_producers(sch: s_tir.Schedule) -> None:
    root = sch.get_sblock("root") if _has_root(sch) else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for block in blocks[:-1]:
        try:
            sch.compute_inline(block)
        except Exception:  # not inlinable (reduction, multiple consumers...): keep it
            continue


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def vector_width(extent: int, lanes: int) -> int:
    """The widest vector (a power of two, at most ``lanes``, at least 4) whose width divides
    ``extent``; 0 if none does. (Channel counts such as 88, 120 or 200 are whole 8-lane vectors,
    not 16-lane ones: half a zmm beats a scalar loop.)"""
    w = lanes
    while w >= 4:
        if extent % w == 0:
            return w
        w //= 2
    return 0


def _schedule_block(sch: s_tir.Schedule, block, lanes: int) -> None:  # type: ignore[no-untyped-def]
    loops = sch.get_loops(block)
    if not loops:
        return
    if _is_spatial(sch, block):
        # keep the loop nest (fusing it turns every index into div/mod chains): vectorise the
        # innermost loop when it is whole vectors, run the leading loops in parallel
        inner = loops[-1]
        extent = _extent(sch, inner) or 0
        total = 1
        for loop in loops:  # (before the split below replaces the innermost loop)
            total *= _extent(sch, loop) or 1
        width = vector_width(extent, lanes)
        if len(loops) > 1 and width:
            _, vec = sch.split(inner, [None, width])
            sch.vectorize(vec)
        if total >= _MIN_PARALLEL_WORK and len(loops) > 1:
            outer = sch.fuse(*loops[: max(1, len(loops) - 2)])
            sch.parallel(outer)
        return
    # reduction: parallel over the leading data-parallel loops (TOPI puts them first)
    n_spatial = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar)
    spatial = loops[:n_spatial]
    if not spatial:
        return
    if _channels_innermost(sch, block, spatial, lanes):
        _reduce_across_vectors(sch, block, spatial, loops[n_spatial:], lanes)
        return
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if (_extent(sch, fused) or 0) >= 2:
        sch.parallel(fused)


def _uses(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _channels_innermost(sch: s_tir.Schedule, block, spatial: list, lanes: int) -> bool:  # type: ignore[no-untyped-def]
    """A reduction over outer axes of a channels-last tensor (a pool, a mean over H and W): its
    last data-parallel loop is whole vectors and indexes the last (contiguous) axis of what it
    reads, so vectors of it can be reduced side by side."""
    stmt = sch.get(block)
    extent = _extent(sch, spatial[-1]) or 0
    if not vector_width(extent, lanes) or not stmt.reads:
        return False
    last = [iv for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar][-1].var
    return all(_uses(r.region[-1].min, last) for r in stmt.reads if len(r.region))


def _reduce_across_vectors(sch: s_tir.Schedule, block, spatial: list, reduce: list, lanes: int) -> None:  # type: ignore[no-untyped-def]
    """``[outer..., c, r...]`` -> ``[outer..., c/w, r..., w]`` (``w = vector_width``): each step
    of the reduction combines whole vectors of channels (no serial chain through one scalar
    accumulator); the outer loops in parallel where there is work."""
    total = 1
    for loop in spatial:
        total *= _extent(sch, loop) or 1
    c_out, c_in = sch.split(spatial[-1], [None, vector_width(_extent(sch, spatial[-1]) or 0, lanes)])
    sch.reorder(c_out, *reduce, c_in)
    sch.vectorize(c_in)
    if len(spatial) > 1 and total >= _MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0])


def schedule_primfunc(func: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    _inline_producers(sch)
    if not _has_root(sch):
        return func
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        try:
            trial = sch.copy()
            _schedule_block(trial, trial.get_sblock(sch.get(block).name_hint), lanes)
            sch = trial
        except Exception:  # leave this block naive, keep the others
            continue
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="tvmq.ScheduleGeneric")
class ScheduleGeneric:
    """Schedule every unscheduled PrimFunc of ``mod`` (see module docstring)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            mod[gv] = schedule_primfunc(func, self.lanes).with_attr(
                "global_symbol", func.attrs["global_symbol"] if func.attrs and "global_symbol" in func.attrs else gv.name_hint)
        return mod
