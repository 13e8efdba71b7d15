#!/usr/bin/env python3
"""Load the labeled ImageNet sample and measure an ONNX classifier's top-1 on it.

As a module::

    from imagenet_eval import load_imagenet_sample
    images, labels = load_imagenet_sample("../shared/data/imagenet-sample", n=100)

As a CLI (onnxruntime, CPU)::

    python scripts/imagenet_eval.py model.onnx --root ../shared/data/imagenet-sample [--n 1000]

The sample directory holds ``labels.csv`` (columns ``file, wnid, class_index, name``; class_index
is the standard sorted-WordNet-id 1000-class order) and ``images/<file>``. Preprocessing is the
torchvision evaluation transform: RGB, resize the shorter side to 256 (bilinear), center-crop
224, scale to [0, 1], normalize with the ImageNet mean/std, NCHW float32.

The images are probably ImageNet *training* images, so absolute accuracy here is optimistic; use it
for fp32-versus-quantized comparisons and calibration. Pillow is needed only to decode images
(``pip install pillow``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE = 256
CROP = 224


def preprocess(path: str | Path) -> np.ndarray:
    """Decode one image and return it as a normalized float32 array of shape [3, 224, 224]."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "Pillow is required to decode ImageNet images: pip install pillow"
        ) from exc

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        # Same arithmetic as torchvision's Resize(256): short side exactly 256, long side floored.
        if w <= h:
            new_w, new_h = RESIZE, int(RESIZE * h / w)
        else:
            new_w, new_h = int(RESIZE * w / h), RESIZE
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        left = int(round((new_w - CROP) / 2.0))
        top = int(round((new_h - CROP) / 2.0))
        img = img.crop((left, top, left + CROP, top + CROP))
        arr = np.asarray(img, dtype=np.float32) / 255.0  # HWC
    arr = (arr - MEAN) / STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_labels(root: str | Path) -> list[tuple[str, int]]:
    """Return ``(file, class_index)`` pairs from ``root/labels.csv`` in file order."""
    with open(Path(root) / "labels.csv", newline="") as f:
        return [(row["file"], int(row["class_index"])) for row in csv.DictReader(f)]


def load_imagenet_sample(
    root: str | Path, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load the first ``n`` (default: all) sample images, preprocessed.

    Returns ``(images, labels)``: float32 ``[N, 3, 224, 224]`` and int64 ``[N]``.
    Raises ``FileNotFoundError`` if ``root`` has no ``labels.csv`` (callers such as tests should
    catch it and skip), and ``ImportError`` naming ``pip install pillow`` if Pillow is missing.
    """
    root = Path(root)
    if not (root / "labels.csv").is_file():
        raise FileNotFoundError(f"no ImageNet sample at {root} (expected {root / 'labels.csv'})")
    entries = read_labels(root)
    if n is not None:
        entries = entries[:n]
    images = np.empty((len(entries), 3, CROP, CROP), dtype=np.float32)
    for i, (name, _) in enumerate(entries):
        images[i] = preprocess(root / "images" / name)
    labels = np.array([label for _, label in entries], dtype=np.int64)
    return images, labels


FOOLBOX_INSTALL = "pip install --no-deps foolbox==3.3.4"


def load_foolbox_imagenet() -> tuple[np.ndarray, np.ndarray]:
    """The 20 labeled ImageNet images shipped in the ``foolbox`` wheel (``data/imagenet_NN_<label>
    .jpg``, label = sorted-WordNet-id class index), preprocessed like the sample.

    Only the wheel's files are read (foolbox itself is not imported: its dependencies are not
    needed). Raises ``FileNotFoundError`` naming the install command when it is absent.
    """
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the foolbox images are not installed: {FOOLBOX_INSTALL}")
    files = sorted((Path(spec.origin).parent / "data").glob("imagenet_*_*.jpg"))
    if len(files) != 20:
        raise FileNotFoundError(f"expected 20 foolbox ImageNet images, found {len(files)}: {FOOLBOX_INSTALL}")
    images = np.stack([preprocess(f) for f in files])
    labels = np.array([int(f.stem.split("_")[2]) for f in files], dtype=np.int64)
    return images, labels


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((np.argmax(logits, axis=1) == labels).mean())


def onnxruntime_logits(model: str | Path, images: np.ndarray) -> np.ndarray:
    """Run ``model`` on ``images`` with onnxruntime (CPU), one image at a time unless the
    model's batch dimension is symbolic."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0]
    step = 64 if not isinstance(batch, int) else batch
    outs = [
        sess.run(None, {inp.name: images[i : i + step]})[0] for i in range(0, len(images), step)
    ]
    return np.concatenate(outs, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="onnxruntime top-1 on the ImageNet sample")
    parser.add_argument("model", type=Path, help="ONNX classifier (input NCHW 1x3x224x224)")
    parser.add_argument("--root", type=Path, default=Path("../shared/data/imagenet-sample"))
    parser.add_argument("--n", type=int, default=None, help="evaluate only the first N images")
    args = parser.parse_args(argv)

    try:
        t0 = time.perf_counter()
        images, labels = load_imagenet_sample(args.root, args.n)
        t1 = time.perf_counter()
    except (FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logits = onnxruntime_logits(args.model, images)
    t2 = time.perf_counter()
    acc = top1(logits, labels)
    print(
        f"{args.model}: top-1 {acc * 100:.1f}% ({int(round(acc * len(labels)))}/{len(labels)}) "
        f"[load {t1 - t0:.1f}s, onnxruntime {t2 - t1:.1f}s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
