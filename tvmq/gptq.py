"""Error-feedback rounding of weights (OBQ / GPTQ: Frantar et al. 2022), numpy only.

A layer's output error from quantizing its weights ``W`` (``[K, d]``, ``d`` = the im2col patch
length) on calibration inputs ``X`` (``[d, P]``, one column per output pixel) is
``||(W_q - W) X||^2 = sum_k (w_q - w)_k H (w_q - w)_k^T`` with ``H = X X^T``. GPTQ quantizes the
input columns one at a time (largest ``diag(H)`` first: "act order") and, after rounding column
``i``, moves its error onto the not-yet-quantized columns through the inverse Hessian, so the
rounding errors cancel in the output instead of adding up. Scales stay per output channel (the
clipping search of ``schedules.quant.weight_scales``, on the original weights), so the kernels
and the integer format are unchanged; only which integer each weight rounds to differs.

``patches`` turns a layer input (NCHW) into its im2col columns, ``HessianSum`` accumulates
``X X^T`` per group (``[groups, d, d]``: one matrix for a conv or dense, one per channel for a
depthwise conv), ``gptq_round`` does the rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schedules.quant import PAIR_LIMIT

# damping: this fraction of the mean diagonal is added to H (GPTQ's default is 0.01)
DAMP = 0.01
# a Hessian from fewer patches than this many per weight column (a classifier seeing one vector
# per image: 256 for 1280 columns) is rank-deficient: GPTQ would push the rounding error into
# directions the calibration inputs never span, and the recipe rounds that layer to nearest
MIN_PATCHES_PER_COLUMN = 4
BLOCK = 128


def _grid(n: int, step: int) -> np.ndarray:
    return np.arange(0, n, step)


def output_step(layer: Any, max_patches: int | None) -> int:
    """The stride of the output-pixel grid that ``patches`` samples: 1 (every pixel) up to
    ``max_patches`` pixels per image, then the smallest step that brings them under it."""
    if layer.op == "dense" or not max_patches:
        return 1
    oh, ow = layer.output_shape[2], layer.output_shape[3]
    step = 1
    while len(_grid(oh, step)) * len(_grid(ow, step)) > max_patches:
        step += 1
    return step


def patches(x: np.ndarray, layer: Any, max_patches: int | None = None) -> np.ndarray:
    """``[groups, d, P]``: the im2col columns of input ``x`` of ``layer`` (a ``LayerInfo``),
    rows in the order of ``weight.reshape(K, -1)`` within a group; with ``max_patches``, the
    output pixels of a regular grid (``output_step``) of at most that many per image (neighbouring
    patches are nearly the same: a Hessian needs a few times ``d`` of them, not every one)."""
    x = np.asarray(x, np.float32)
    if layer.op == "dense":
        return x.reshape(x.shape[0], -1).T[None]
    n, c, h, w = x.shape
    kh, kw = layer.weight_shape[2], layer.weight_shape[3]
    (sh, sw), (dh, dw), g = layer.strides, layer.dilations, layer.groups
    top, left, bottom, right = layer.pads
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    step = output_step(layer, max_patches)
    ny, nx = len(_grid(oh, step)), len(_grid(ow, step))
    ty, tx = sh * step, sw * step  # input stride between sampled output pixels
    if kh == kw == 1 and (top, left, bottom, right) == (0, 0, 0, 0):
        cols = x[:, :, :ty * (ny - 1) + 1:ty, :tx * (nx - 1) + 1:tx]
        return cols.transpose(1, 0, 2, 3).reshape(g, c // g, -1)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols = np.empty((c, kh, kw, n, ny, nx), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i * dh:i * dh + ty * (ny - 1) + 1:ty,
                               j * dw:j * dw + tx * (nx - 1) + 1:tx].transpose(1, 0, 2, 3)
    return cols.reshape(g, (c // g) * kh * kw, -1)


class HessianSum:
    """``sum X X^T`` of one layer over many inputs: patches are buffered and multiplied
    ``batch`` images at a time (one large product instead of many small ones; the ``d x d``
    sum is touched once per batch), at most ``max_patches`` per image (``patches``)."""

    def __init__(self, layer: Any, max_patches: int | None = None, batch: int = 16) -> None:
        self.layer, self.max_patches, self.batch = layer, max_patches, batch
        self.pending: list[np.ndarray] = []
        self.sum: np.ndarray | None = None
        self.count = 0  # patches summed

    def add(self, x: np.ndarray) -> None:
        p = patches(x, self.layer, self.max_patches)
        self.pending.append(p)
        self.count += p.shape[2]
        if len(self.pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        p = np.concatenate(self.pending, axis=2)
        self.pending = []
        if p.shape[0] == 1:
            xx = (p[0] @ p[0].T)[None].astype(np.float64)
        else:
            xx = np.matmul(p, p.transpose(0, 2, 1)).astype(np.float64)
        self.sum = xx if self.sum is None else self.sum + xx

    def value(self) -> np.ndarray:
        self._flush()
        assert self.sum is not None, "no input was added"
        return self.sum


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """``[G, d, d]``: the upper Cholesky factor of ``(H + damp I)^-1`` per group."""
    d = h.shape[-1]
    damp = DAMP * np.maximum(np.diagonal(h, axis1=1, axis2=2).mean(axis=1), 1e-12)
    hd = h + damp[:, None, None] * np.eye(d)
    for _ in range(6):  # an ill-conditioned H: more damping until it factors
        try:
            inv = np.linalg.inv(np.linalg.cholesky(hd))  # L^-1
            hinv = np.matmul(inv.transpose(0, 2, 1), inv)  # H^-1 = L^-T L^-1
            return np.linalg.cholesky(hinv).transpose(0, 2, 1)
        except np.linalg.LinAlgError:
            hd = hd + 10 * damp[:, None, None] * np.eye(d)
    raise np.linalg.LinAlgError("the Hessian does not factor")


def _partners(weight_shape: tuple[int, ...]) -> np.ndarray:
    """For each im2col column ``(c, r, s)`` of an ungrouped conv, the column of the same tap in
    input channel ``c ^ 1`` (the pair ``vpmaddubsw`` multiplies together), -1 for none."""
    c, taps = weight_shape[1], int(np.prod(weight_shape[2:], dtype=np.int64))
    ch = np.repeat(np.arange(c), taps)
    other = ch ^ 1
    return np.where(other < c, other * taps + np.tile(np.arange(taps), c), -1)


def gptq_round(weight: np.ndarray, scales: np.ndarray, bits: int, hessian: np.ndarray,
               groups: int = 1, pairs: bool = False) -> np.ndarray:
    """The integer weights (``int8`` storage, ``[-(2^(b-1)-1), 2^(b-1)-1]``) of ``weight``
    (``[K, C/groups, ...]``) at the per-output-channel ``scales``, rounded with error feedback
    under ``hessian`` (``[groups, d, d]``, ``HessianSum``). ``pairs`` (8-bit ungrouped convs):
    each weight is clipped so that it and the already rounded weight of its input-channel pair
    keep ``schedules.quant.pairs_fit_int16`` (same-signed parts summing to at most 128); the
    clipping error is fed forward like any rounding error."""
    if pairs and (groups != 1 or weight.ndim != 4):
        raise ValueError("pair-constrained rounding is for ungrouped conv weights")
    k = weight.shape[0]
    kg = k // groups
    w = weight.astype(np.float64).reshape(groups, kg, -1).copy()  # [G, Kg, d]
    d = w.shape[2]
    s = np.asarray(scales, np.float64).reshape(groups, kg, 1)
    hi = 2 ** (bits - 1) - 1
    h = np.array(hessian, np.float64).reshape(groups, d, d)
    dead = np.diagonal(h, axis1=1, axis2=2) <= 0  # inputs that are always 0: any value works
    if dead.any():
        gi, ci = np.nonzero(dead)
        h[gi, ci, ci] = 1.0
        w[gi, :, ci] = 0.0
    perm = np.argsort(-np.diagonal(h, axis1=1, axis2=2), axis=1, kind="stable")  # act order
    w = np.take_along_axis(w, perm[:, None, :], axis=2)
    h = np.take_along_axis(np.take_along_axis(h, perm[:, :, None], axis=1), perm[:, None, :], axis=2)
    u = _inverse_cholesky(h)
    q = np.empty_like(w)
    if pairs:  # the partner of permuted column i, as a permuted column
        partner = _partners(weight.shape)[perm[0]]
        where = np.argsort(perm[0])
        partner = np.where(partner >= 0, where[np.maximum(partner, 0)], -1)
    for b0 in range(0, d, BLOCK):
        b1 = min(d, b0 + BLOCK)
        err = np.empty((groups, kg, b1 - b0))
        for i in range(b0, b1):
            col = w[:, :, i]
            qi = np.clip(np.round(col / s[:, :, 0]), -hi, hi)
            if pairs and 0 <= partner[i] < i:
                other = q[:, :, partner[i]]
                qi = np.clip(qi, np.maximum(-other, 0) - PAIR_LIMIT, PAIR_LIMIT - np.maximum(other, 0))
            q[:, :, i] = qi
            e = (col - qi * s[:, :, 0]) / u[:, i, i][:, None]
            err[:, :, i - b0] = e
            if i + 1 < b1:
                w[:, :, i + 1:b1] -= e[:, :, None] * u[:, None, i, i + 1:b1]
        if b1 < d:
            w[:, :, b1:] -= np.matmul(err, u[:, b0:b1, b1:])
    inv = np.argsort(perm, axis=1)
    q = np.take_along_axis(q, inv[:, None, :], axis=2)
    return q.reshape(weight.shape).astype(np.int8)


# clipping ratios that ``hessian_scales`` tries (as ``schedules.quant.weight_scales``' grid)
CLIP_RATIOS = np.linspace(1.0, 0.3, 36)


def hessian_scales(weight: np.ndarray, bits: int, hessian: np.ndarray, groups: int = 1,
                   ratios: np.ndarray = CLIP_RATIOS) -> np.ndarray:
    """Per-output-channel scales whose clipping ratio (of ``max |w| / (2^(b-1)-1)``, from
    ``ratios``) minimises the layer's *output* error on the calibration inputs,
    ``(w_q s - w) H (w_q s - w)^T`` with ``w_q`` rounded to nearest, instead of the weights' own
    ``||w_q s - w||^2`` (``schedules.quant.weight_scales``): an input channel that carries much
    signal weighs more than one that is nearly always 0. ``hessian`` as ``gptq_round``."""
    k = weight.shape[0]
    kg = k // groups
    w = weight.astype(np.float64).reshape(groups, kg, -1)
    d = w.shape[2]
    h = np.asarray(hessian, np.float64).reshape(groups, d, d)
    hi = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=2)
    base = np.where(amax > 0, amax / hi, 1.0)  # [G, Kg]
    best = np.full(base.shape, np.inf)
    chosen = base.copy()
    for r in ratios:
        s = base * r
        delta = np.clip(np.round(w / s[:, :, None]), -hi, hi) * s[:, :, None] - w
        err = (np.matmul(delta, h) * delta).sum(axis=2)
        better = err < best
        best = np.where(better, err, best)
        chosen = np.where(better, s, chosen)
    return chosen.reshape(k)


# scale factors (of the weight-MSE clipping scales) that ``gptq_clip_round`` tries
GPTQ_CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 1.05, 1.1)


def gptq_clip_round(weight: np.ndarray, scales: np.ndarray, bits: int, hessian: np.ndarray, groups: int = 1,
                    factors: tuple[float, ...] = GPTQ_CLIP_FACTORS, pairs: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(integer weights, scales)``: GPTQ (``gptq_round``) at ``scales * f`` for every ``f`` of
    ``factors``, and per output channel the one with the least output error
    ``(w_q s - w) H (w_q s - w)^T``. GPTQ rounds each output channel on its own (the error
    feedback runs along a channel's inputs), so a channel's result does not depend on the
    others' scales: picking rows is GPTQ at the picked scales. ``pairs``: as ``gptq_round``."""
    k = weight.shape[0]
    kg = k // groups
    w = weight.astype(np.float64).reshape(groups, kg, -1)
    d = w.shape[2]
    h = np.asarray(hessian, np.float64).reshape(groups, d, d)
    base = np.asarray(scales, np.float64)
    best = np.full(k, np.inf)
    q_best = np.zeros(weight.shape, np.int8)
    s_best = base.copy()
    for f in factors:
        s = base * f
        q = gptq_round(weight, s, bits, hessian, groups, pairs)
        delta = q.reshape(groups, kg, d).astype(np.float64) * s.reshape(groups, kg, 1) - w
        err = (np.matmul(delta, h) * delta).sum(axis=2).reshape(k)
        better = err < best
        best = np.where(better, err, best)
        q_best[better] = q[better]
        s_best = np.where(better, s, s_best)
    return q_best, s_best
