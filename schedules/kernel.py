"""What a kernel is: ``KernelKey(op, precision, isa)`` and the ``KernelDef`` that bundles the
TE compute, the schedule template, the fallback configuration (chosen from the shape, no
tuning), the weight packing and the shape of the kernel's buffers. Kernel modules build their
``KernelDef``s from these; ``schedules.registry`` registers and selects them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from tvm import s_tir, te

from . import bf16, reference, space
from .intrinsics import hoist_tile_config
from .target_features import TargetFeatures
from .workload import INTEGER_ACTIVATIONS, Conv2dWorkload, DenseWorkload, Workload


FLOAT_PRECISIONS = ("fp32", "bf16")  # kernels whose epilogue is float arithmetic throughout


@dataclass(frozen=True)
class KernelKey:
    op: str
    precision: str
    isa: str

    def __str__(self) -> str:
        return f"{self.op}/{self.precision}/{self.isa}"

    @classmethod
    def parse(cls, text: str) -> KernelKey:
        """Inverse of ``str``: ``"conv2d/w8a8/avx2"`` -> ``KernelKey``."""
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"not a kernel key (op/precision/isa): {text!r}")
        return cls(*parts)


@dataclass(frozen=True)
class KernelDef:
    key: KernelKey
    compute: Callable[[Any, Any], list]
    schedule: Callable[..., None]  # (sch, workload, config, sample=False)
    fallback_config: Callable[[Any, TargetFeatures], Any]
    pack_weight: Callable[[np.ndarray, Any, Any], np.ndarray]
    input_shape: Callable[[Any, Any], tuple[int, ...]]  # a reshape of the layer's data tensor
    output_shape: Callable[[Any, Any], tuple[int, ...]]  # a reshape of the layer's output
    description: str = ""
    # float kernels: the order in which each output sums its terms (see ``float_reference``)
    reduction_order: Callable[[Any, Any], list] | None = None
    # what the target must have beyond the ISA level of the key (``select`` skips the kernel
    # where it returns False: Cascade Lake is avx512_vnni without AVX512-BF16)
    requires: Callable[[TargetFeatures], bool] | None = None
    # float kernels whose arithmetic is not one multiply-add per term in ``reduction_order``
    # (the native bf16 kernels' ``vdpbf16ps``): ``(wl, cfg, data, weight, bias, residual)`` ->
    # the exact output, which ``float_reference`` returns instead
    float_reference_fn: Callable[..., np.ndarray] | None = None
    # the configuration types the kernel builds, where its start configuration's space offers
    # more (the portable int8 conv shares fp32's Conv2dConfig space but not its pointwise
    # template); None: all of them
    config_types: tuple[type, ...] | None = None
    # kernels that build some configurations' PrimFunc directly in TIR (no TE compute /
    # schedule: ``depthwise.int8_vnni``): ``(wl, cfg)`` -> the PrimFunc, or None where the
    # configuration is built from ``compute`` + ``schedule``. Such a kernel has no W4A8 twin.
    build_direct: Callable[[Any, Any], Any] | None = None
    # the workloads a model build compiles with this kernel (``registry.select_for``); the
    # others take the kernel of the next ISA level down. None: all. (AMX int8: deep reductions
    # only, ``int8_dispatch.amx_pays``.) Kernel tests and ``select`` ignore it.
    prefers: Callable[[Any], bool] | None = None

    def tuning_space(self, wl: Workload, features: TargetFeatures) -> list[Any]:
        """The candidate configurations of this kernel for ``wl``, the fallback first."""
        candidates = space.config_space(self.fallback_config(wl, features), wl, features)
        if self.config_types is None:
            return candidates
        return [c for c in candidates if isinstance(getattr(c, "base", c), self.config_types)]

    def float_reference(self, wl: Workload, cfg: Any, data: np.ndarray, weight: np.ndarray,
                        bias: np.ndarray | None = None, residual: np.ndarray | None = None, *,
                        fma: bool) -> np.ndarray:
        """What this float kernel computes, bit for bit, when compiled for a target with
        (``fma=True``) or without FMA: the same terms summed in the same order with the same
        roundings (``reference.conv2d_in_order`` / ``dense_in_order``); bf16 kernels round
        ``data`` and ``weight`` to bf16 first, as they do. ``data`` is NCHW / ``[N, C]``,
        ``weight`` OIHW / ``[K, C]`` float32 (unpacked); returns ``wl.out_shape``. Kernels with
        a ``float_reference_fn`` (native bf16: ``vdpbf16ps`` fuses every term, FMA or not) use it.
        A channels-last workload takes ``data`` / ``residual`` NHWC and returns NHWC (the same
        sums: the layout changes where values sit, not what is added)."""
        if isinstance(wl, Conv2dWorkload) and wl.nhwc:
            nchw = replace(wl, layout="NCHW")
            res = None if residual is None else np.moveaxis(np.asarray(residual).reshape(wl.out_shape), 3, 1)
            out = self.float_reference(nchw, cfg, np.moveaxis(np.asarray(data).reshape(wl.data_shape), 3, 1),
                                       weight, bias, res, fma=fma)
            return np.ascontiguousarray(np.moveaxis(out, 1, 3))
        if self.float_reference_fn is not None:  # (independent of FMA contraction)
            return self.float_reference_fn(wl, cfg, data, weight, bias, residual)
        if self.reduction_order is None:
            raise TypeError(f"{self.key} is not a float kernel")
        if self.key.precision == "bf16":
            data, weight = bf16.round_bf16(data), bf16.round_bf16(weight)
        order = self.reduction_order(wl, cfg)
        fn = reference.dense_in_order if isinstance(wl, DenseWorkload) else reference.conv2d_in_order
        return fn(data, weight, bias, wl, order, residual, fma)  # type: ignore[arg-type]

    def build_primfunc(self, workload: Workload, config: Any, *, sample_seed: int | None = None):  # type: ignore[no-untyped-def]
        """The scheduled ``PrimFunc`` (attribute ``tirx.is_scheduled`` set).

        The schedule's knobs are MetaSchedule sampling decisions; by default they take the
        config's values. With ``sample_seed`` they are drawn at random instead (one point of the
        search space the tuner explores). A configuration the kernel builds directly
        (``build_direct``) has no knobs to sample.
        """
        if self.key.precision not in FLOAT_PRECISIONS and workload.epilogue.activation not in INTEGER_ACTIVATIONS:
            raise ValueError(f"{self.key}: an integer epilogue applies {', '.join(INTEGER_ACTIVATIONS)}, "
                             f"not {workload.epilogue.activation}")
        if self.build_direct is not None:
            direct = self.build_direct(workload, config)
            if direct is not None:
                return direct.with_attr("tirx.is_scheduled", True)
        func = te.create_prim_func(self.compute(workload, config))
        sch = s_tir.Schedule(func, seed=sample_seed)
        self.schedule(sch, workload, config, sample_seed is not None)
        return hoist_tile_config(sch.mod["main"]).with_attr("tirx.is_scheduled", True)

    def design_space(self, workload: Workload, config: Any) -> Callable[[Any], None]:
        """The schedule template as a MetaSchedule ``ScheduleFn`` body (knobs sampled)."""
        return lambda sch: self.schedule(sch, workload, config, True)
