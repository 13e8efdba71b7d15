"""``CalibrationData``: validated calibration samples for a model's inputs.

Sources: a numpy array ``[N, ...]`` (single-input models), a dict ``name -> [N, ...]``, a
``.npy`` / ``.npz`` file (an ``.npz`` keyed by input name, or holding one array), or a folder of
images with a preprocessing spec. Every sample is checked: finite values, the input's shape
(per sample, without the batch dimension) and dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..frontend import TensorSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


@dataclass(frozen=True)
class ImagePreprocess:
    """Image folder -> model input: RGB, resize the shorter side, center crop, scale, normalize."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1 / 255.0

    def __call__(self, path: Path) -> np.ndarray:
        try:
            from PIL import Image  # (deferred: an optional dependency, images only)
        except ImportError:
            raise InputError("reading images needs Pillow: pip install pillow") from None
        if not path.is_file():
            raise InputError(f"cannot read image {path}: it is a directory, not a file")
        try:
            img = Image.open(path)
            img.load()
            img = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # undecodable, truncated, not an image
            raise InputError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        w, h = img.size
        r = self.resize / min(w, h)
        img = img.resize((max(1, int(w * r)), max(1, int(h * r))), Image.BILINEAR)
        w, h = img.size
        left, top = int(round((w - self.crop) / 2)), int(round((h - self.crop) / 2))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(img, np.float32) * self.scale
        x = (x - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return x.transpose(2, 0, 1)


class CalibrationData:
    """``N`` samples for each model input, validated against the inputs' specs."""

    def __init__(self, arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> None:
        names = [s.name for s in inputs]
        unknown = sorted(set(arrays) - set(names))
        missing = [n for n in names if n not in arrays]
        if unknown or missing:
            raise InputError(f"calibration data does not match the model's inputs {names}: "
                             f"missing {missing}, unknown {unknown}")
        counts = {n: len(arrays[n]) for n in names}
        if len(set(counts.values())) != 1:
            raise InputError(f"calibration inputs have different sample counts: {counts}")
        n = next(iter(counts.values())) if counts else 0
        if n == 0:
            raise InputError("the calibration set is empty: give at least one sample")
        self.arrays: dict[str, np.ndarray] = {}
        for spec in inputs:
            a = np.asarray(arrays[spec.name])
            per_sample = tuple(spec.shape[1:])
            if tuple(a.shape[1:]) != per_sample:
                raise InputError(f"calibration input {spec.name!r}: samples of shape "
                                 f"{tuple(a.shape[1:])}, the model takes {per_sample} "
                                 f"(array {tuple(a.shape)} = [N, *sample])")
            if a.dtype != np.dtype(spec.dtype):
                if np.issubdtype(a.dtype, np.floating) and np.dtype(spec.dtype).kind == "f":
                    a = a.astype(spec.dtype)
                else:
                    raise InputError(f"calibration input {spec.name!r}: dtype {a.dtype}, the "
                                     f"model takes {spec.dtype}")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                bad = int(np.count_nonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1)))
                raise InputError(f"calibration input {spec.name!r}: {bad} sample(s) contain NaN "
                                 f"or inf")
            self.arrays[spec.name] = a
        self.inputs = list(inputs)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def samples(self, batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch`` samples each (the last one dropped if incomplete)."""
        for i in range(0, len(self) - batch + 1, batch):
            yield {k: np.ascontiguousarray(v[i:i + batch]) for k, v in self.arrays.items()}

    @classmethod
    def from_source(cls, source: str | os.PathLike | np.ndarray | Mapping[str, np.ndarray],
                    inputs: Sequence[TensorSpec], *, limit: int | None = None,
                    preprocess: ImagePreprocess | None = None) -> CalibrationData:
        """Array, dict, ``.npy`` / ``.npz`` file or image folder -> ``CalibrationData``."""
        names = [s.name for s in inputs]
        if isinstance(source, np.ndarray):
            arrays = cls._single(names, source)
        elif isinstance(source, Mapping):
            arrays = dict(source)
        else:
            arrays = cls._load_path(Path(source), names, inputs, preprocess, limit)
        if limit is not None:
            arrays = {k: v[:limit] for k, v in arrays.items()}
        return cls(arrays, inputs)

    @staticmethod
    def _single(names: list[str], array: np.ndarray) -> dict[str, np.ndarray]:
        if len(names) != 1:
            raise InputError(f"the model has {len(names)} inputs {names}: give a dict or an .npz "
                             f"keyed by input name")
        return {names[0]: array}

    @classmethod
    def _load_path(cls, path: Path, names: list[str], inputs: Sequence[TensorSpec],
                   preprocess: ImagePreprocess | None, limit: int | None) -> dict[str, np.ndarray]:
        if not path.exists():
            raise InputError(f"calibration data not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            files = files[:limit] if limit is not None else files
            pre = preprocess or ImagePreprocess(crop=inputs[0].shape[-1] if inputs else 224)
            arrays = [pre(f) for f in files]
            try:
                return cls._single(names, np.stack(arrays))
            except ValueError as e:
                raise InputError(f"the images of {path} give samples of different shapes: {e}") from None
        if path.stat().st_size == 0:
            raise InputError(f"cannot read calibration data {path}: the file is empty (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(6)
        if head != b"\x93NUMPY" and not head.startswith(b"PK"):
            raise InputError(f"cannot read calibration data {path}: not a numpy file (.npy / .npz)")
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise InputError(f"cannot read calibration data {path}: it holds Python objects (object "
                                 f"arrays); tvmq reads numeric arrays only, never pickles") from None
            raise InputError(f"cannot read calibration data {path}: {str(e).splitlines()[0]}") from None
        except (OSError, EOFError) as e:
            raise InputError(f"cannot read calibration data {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if isinstance(loaded, np.ndarray):
            if loaded.ndim == 0:
                raise InputError(f"calibration data {path} is a single number (a 0-d array); give an "
                                 f"array of samples [N, ...]")
            return cls._single(names, loaded)
        with loaded:
            keys = list(loaded.keys())
            if not keys:
                raise InputError(f"{path} holds no arrays")
            if set(names) <= set(keys):
                return {n: loaded[n] for n in names}
            if len(keys) == 1:
                return cls._single(names, loaded[keys[0]])
            raise InputError(f"{path} holds arrays {keys}; expected the model's input names {names}")
