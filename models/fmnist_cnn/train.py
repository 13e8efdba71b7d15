#!/usr/bin/env python3
"""Train a small CNN on Fashion-MNIST and export it to ONNX for the tvmq tests.

Outputs (written next to this file):
  model.onnx  -- opset 17, input "input" [batch,1,28,28] float32,
                 output "logits" [batch,10] float32.  BatchNormalization nodes
                 are kept as separate nodes (not folded into the convs), because
                 the compiler under test folds BN itself.
  data.npz    -- small uint8 data slice (np.savez_compressed):
                   test_x  [1000,28,28] first 1000 t10k images
                   test_y  [1000]       their labels
                   calib_x [256,28,28]  first 256 train images
                   calib_y [256]        their labels

Input preprocessing (the model expects this; it is NOT part of the graph):
    x = images.astype(np.float32) / 255.0        # uint8 -> [0, 1]
    x = (x - 0.2860) / 0.3530                    # Fashion-MNIST mean / std
    x = x.reshape(N, 1, 28, 28)                  # NCHW float32

Data: the Debian/Ubuntu package `dataset-fashion-mnist`
(apt-get install -y dataset-fashion-mnist), which installs the original IDX
files under /usr/share/datasets/fashion-mnist/.  Fashion-MNIST is (c) Zalando
SE, MIT license.

Usage:
    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx onnxruntime numpy
    /tmp/torchvenv/bin/python models/fmnist_cnn/train.py

Training is deterministic for a fixed seed on CPU (2 threads, Adam, 3 epochs).
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = "/usr/share/datasets/fashion-mnist"

MEAN = 0.2860
STD = 0.3530
NUM_CLASSES = 10


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def load_images(path: str) -> np.ndarray:
    """Read an IDX3 ubyte.gz image file -> uint8 [N, 28, 28]."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    return np.frombuffer(buf, np.uint8, offset=16).reshape(-1, 28, 28).copy()


def load_labels(path: str) -> np.ndarray:
    """Read an IDX1 ubyte.gz label file -> uint8 [N]."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    return np.frombuffer(buf, np.uint8, offset=8).copy()


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """split is "train" (60k) or "t10k" (10k)."""
    x = load_images(os.path.join(DATA_DIR, f"{split}-images-idx3-ubyte.gz"))
    y = load_labels(os.path.join(DATA_DIR, f"{split}-labels-idx1-ubyte.gz"))
    assert x.shape[0] == y.shape[0]
    return x, y


def preprocess(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> normalized float32 [N,1,28,28]."""
    x = images_u8.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return x.reshape(-1, 1, 28, 28).astype(np.float32)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm.  ReLU is applied by the caller."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    """relu(x + bn(conv3x3(relu(bn(conv3x3(x))))))"""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c, c, 3)
        self.conv2 = conv_bn(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class FMnistCNN(nn.Module):
    """~39k parameter CNN.

    [N,1,28,28]
      stem   : conv3x3 1->16            + BN + ReLU   -> [N,16,28,28]
      dw     : depthwise conv3x3 s2 p1  + BN + ReLU   -> [N,16,14,14]  (groups=16)
      pw     : conv1x1 16->32           + BN + ReLU   -> [N,32,14,14]
      res    : residual block (2x conv3x3 32->32, BN, Add, ReLU)
      down   : conv3x3 s2 32->64        + BN + ReLU   -> [N,64,7,7]
      pool   : global average pool                    -> [N,64,1,1]
      flatten                                         -> [N,64]
      fc     : Linear 64->10 (Gemm)                   -> [N,10]
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16, 3)
        self.dw = conv_bn(16, 16, 3, stride=2, groups=16)
        self.pw = conv_bn(16, 32, 1)
        self.res = ResidualBlock(32)
        self.down = conv_bn(32, 64, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        x = self.res(x)
        x = F.relu(self.down(x))
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# --------------------------------------------------------------------------
# Train / eval
# --------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        pred = model(x[i : i + batch]).argmax(1)
        correct += int((pred == y[i : i + batch]).sum())
    return correct / x.shape[0]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
          lr: float, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (x.shape[0] + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(x.shape[0], generator=gen)
        total_loss = 0.0
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * idx.numel()
        print(f"epoch {epoch + 1}/{epochs}: loss {total_loss / x.shape[0]:.4f} "
              f"({time.time() - t0:.1f}s)", flush=True)


# --------------------------------------------------------------------------
# Export / verification
# --------------------------------------------------------------------------
def export_onnx(model: nn.Module, path: str) -> None:
    """Export with BatchNormalization kept as separate nodes.

    TrainingMode.PRESERVE with the model in eval mode exports BN in inference
    form (running stats) without the eval-mode Conv+BN fusion; constant
    folding is disabled so that weights stay as plain initializers.
    """
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        path,
        opset_version=17,
        dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def check_onnx(path: str) -> None:
    """Structural checks on the exported graph; fixes empty/duplicate node names."""
    import onnx

    m = onnx.load(path)
    g = m.graph

    # Every node gets a non-empty, unique name.
    seen: set[str] = set()
    renamed = False
    for i, n in enumerate(g.node):
        if not n.name or n.name in seen:
            base = n.name or f"{n.op_type}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            n.name = name
            renamed = True
        seen.add(n.name)
    if renamed:
        onnx.save(m, path)

    onnx.checker.check_model(m, full_check=True)

    ops = [n.op_type for n in g.node]
    inits = {t.name for t in g.initializer}
    assert ops.count("BatchNormalization") == 6, ops
    for n in g.node:
        if n.op_type in ("Conv", "Gemm", "BatchNormalization"):
            for w in n.input[1:]:
                assert w in inits, f"{n.name}: {w} is not an initializer"
        if n.op_type == "BatchNormalization":
            for a in n.attribute:
                if a.name == "training_mode":
                    assert a.i == 0, f"{n.name} exported in training mode"
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    print(f"onnx: {len(ops)} nodes {counts}; {len(inits)} initializers; "
          f"{os.path.getsize(path)} bytes")


def check_onnxruntime(path: str, x_u8: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = preprocess(x_u8)
    for bs in (1, 8):
        out = sess.run(["logits"], {"input": x[:bs]})[0]
        assert out.shape == (bs, NUM_CLASSES), out.shape
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    train_x_u8, train_y_u8 = load_split("train")
    test_x_u8, test_y_u8 = load_split("t10k")

    train_x = torch.from_numpy(preprocess(train_x_u8))
    train_y = torch.from_numpy(train_y_u8.astype(np.int64))
    test_x = torch.from_numpy(preprocess(test_x_u8))
    test_y = torch.from_numpy(test_y_u8.astype(np.int64))

    model = FMnistCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}")

    t0 = time.time()
    train(model, train_x, train_y, args.epochs, args.batch, args.lr, args.seed)
    print(f"training time: {time.time() - t0:.1f}s")

    acc_full = evaluate(model, test_x, test_y)
    acc_1k = evaluate(model, test_x[:1000], test_y[:1000])
    print(f"torch test accuracy: full 10k {acc_full:.4f}, first 1000 {acc_1k:.4f}")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "model.onnx")
    data_path = os.path.join(args.out_dir, "data.npz")

    export_onnx(model, onnx_path)
    check_onnx(onnx_path)

    np.savez_compressed(
        data_path,
        test_x=test_x_u8[:1000],
        test_y=test_y_u8[:1000],
        calib_x=train_x_u8[:256],
        calib_y=train_y_u8[:256],
    )
    print(f"wrote {data_path} ({os.path.getsize(data_path)} bytes)")

    # Verify the exported model with onnxruntime on the committed slice.
    data = np.load(data_path)
    ort_1k = check_onnxruntime(onnx_path, data["test_x"], data["test_y"])
    ort_full = check_onnxruntime(onnx_path, test_x_u8, test_y_u8)
    print(f"onnxruntime accuracy: data.npz test slice (1000) {ort_1k:.4f}, full 10k {ort_full:.4f}")


if __name__ == "__main__":
    main()
