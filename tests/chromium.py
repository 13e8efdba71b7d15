"""A headless Chromium that loads a rendered report and reads back what its load script counted
(the report's own check that every image loads; used by tests/test_report.py only)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_INSTALL = "apt-get install -y chromium"


def find_chromium() -> str:
    """The first Chromium / Chrome binary on PATH; ``FileNotFoundError`` naming the install command."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"no {' / '.join(CHROMIUM_NAMES)} on PATH: install it with "
                            f"`{CHROMIUM_INSTALL}` (or `make report-deps`)")


class _DomScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.images: list[str] = []
        self.table_ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "img" and a.get("id"):
            self.images.append(a["id"])
        elif tag == "table" and a.get("id"):
            self.table_ids.add(a["id"])


def check_with_chromium(html_path: str | os.PathLike, timeout_s: float = 60) -> dict:
    """Load the page in headless Chromium and read back what its load script counted.

    Returns ``{"images_loaded": int, "layer_rows": int, "images": [img ids], "has_plans_table": bool}``.
    ``FileNotFoundError`` when no browser is installed; ``TimeoutError`` past ``timeout_s``;
    ``RuntimeError`` when the browser fails or the page's load script did not run.
    """
    exe = find_chromium()
    path = Path(html_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with tempfile.TemporaryDirectory(prefix="tvmq-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
               "--virtual-time-budget=5000", f"--user-data-dir={profile}", "--dump-dom", path.as_uri()]
        # own session: on timeout the whole browser process group (renderer, GPU, zygote) is killed
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            dom, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"{exe} did not dump {path} within {timeout_s:g} s") from None
    if proc.returncode != 0 or not dom.strip():
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise RuntimeError(f"{exe} failed on {path} (exit {proc.returncode}): {tail}")
    scan = _DomScan()
    scan.feed(dom)
    loaded, rows = scan.body.get("data-images-loaded"), scan.body.get("data-layer-rows")
    if loaded is None or rows is None:
        raise RuntimeError(f"the load script of {path} did not run in {exe} (no data-images-loaded / "
                           "data-layer-rows on <body>)")
    return {"images_loaded": int(loaded), "layer_rows": int(rows), "images": scan.images,
            "has_plans_table": "plans" in scan.table_ids}
