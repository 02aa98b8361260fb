"""Report.save: the self-contained HTML report, loaded in headless Chromium.

Chromium (Debian's ``chromium``, installed by .ci/setup) opens the saved page
with a check appended by the test: once the page has loaded, a script counts
the ``<img>`` elements that decoded (``naturalWidth > 0``) and writes the
count into the DOM, which ``--dump-dom`` prints. Outside CI the Chromium tests
skip when the binary is absent; in CI (``CI`` set, or ``TORCHSPARK_CI``, which
.ci/run sets) they fail instead.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark.spark.drift import column_stats
from torchspark.spark.report import _summarise

pytest.importorskip("matplotlib")

CHROMIUM_TIMEOUT = 60.0
CHECK = """<script>
window.addEventListener("load", function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) decoded++;
  }
  var result = document.createElement("div");
  result.id = "torchspark-check";
  result.textContent = "images " + images.length + " decoded " + decoded;
  document.body.appendChild(result);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") or os.environ.get("TORCHSPARK_CI"):
        pytest.fail("chromium is not installed (.ci/setup installs Debian's chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


def images_in_chromium(page: str, tmp_path: Any) -> tuple[int, int]:
    """(images, images decoded) of ``page`` loaded in headless Chromium."""
    binary = chromium()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    profile = tempfile.mkdtemp(dir=tmp_path)
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",  # lets the load event and the script run first
        "--dump-dom",
        checked.as_uri(),
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: its helpers go with it
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT:.0f} s")
    dom = out.decode(errors="replace")
    match = re.search(r'id="torchspark-check">images (\d+) decoded (\d+)<', dom)
    assert match, (
        f"no check result in the DOM; chromium said: {err.decode(errors='replace')[-2000:]}"
    )
    return int(match[1]), int(match[2])


def record(partition: int, rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    column_stats(pa.array(rng.normal(size=500)), stats, "score <b>&'\"")
    column_stats(pa.array(list(rng.normal(size=(500, 2)))), stats, "logits")
    start = 1_700_000_000.0 + partition
    return {
        "run": "abc",
        "execution": 1,
        "stage": 0,
        "partition": partition,
        "attempt": 0,
        "host": "host<1>",
        "pid": 100 + partition % 2,
        "model": "model<script>alert(1)</script>",
        "format": "TorchScript",
        "device": "cpu",
        "batch_size": 100,
        "intra_op_threads": 1,
        "rows": 500,
        "arrow_batches": 5,
        "model_calls": 5,
        "latency_ms": list(rng.gamma(2.0, 3.0, 5)),
        "start": start,
        "end": start + 2.0,
        "rows_truncated": 0,
        "token_budget": 0,
        "error": None,
        "output_stats": stats,
        "input_stats": {},
        "timeline": [(0.4 * i, 100 * i) for i in range(1, 6)],
        **extra,
    }


def decoded_pngs(page: str) -> list[Any]:
    """The embedded PNGs, decoded independently (Pillow)."""
    from PIL import Image

    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    ]


def test_every_section_and_user_strings_escaped(tmp_path, rng):
    reasons = {"ValueError: row <7> & $x$": 2}
    records = [
        record(p, rng, bad_rows=2, bad_row_reasons=reasons, nonfinite={"logits": 1})
        for p in range(4)
    ]
    report = _summarise(records)
    path = report.save(str(tmp_path / "report.html"))
    page = Path(path).read_text(encoding="utf-8")
    for title in (
        "Throughput over time",
        "Latency per Arrow batch",
        "Batch sizes",
        "Rows per executor",
        "Bad rows",
        "Output distributions",
    ):
        assert f"<h2>{title}</h2>" in page
    assert "Input distributions" not in page  # none recorded
    # Six plots, each a real PNG of some size.
    images = decoded_pngs(page)
    assert len(images) == page.count("<img") == 6
    assert all(im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50 for im in images)
    # Nothing from the job reaches the page unescaped.
    assert "<script>alert" not in page and "<b>&" not in page and "host<1>" not in page
    assert "model&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "score &lt;b&gt;&amp;&#x27;&quot;" in page
    assert "ValueError: row &lt;7&gt; &amp; $x$" in page and ">8<" in page  # 4 tasks x 2
    assert "host&lt;1&gt; pid 100" in page
    assert page.count("<script") == 0  # self-contained and inert


def test_no_rows_failed_and_no_drift_stats_render(tmp_path):
    empty = _summarise([])
    empty.failed = True
    empty.errors.append("PythonException: boom <here>")
    page = Path(empty.save(str(tmp_path / "failed.html"))).read_text(encoding="utf-8")
    assert "(FAILED)" in page and "boom &lt;here&gt;" in page
    assert "No rows: the job ran no task" in page
    assert "<img" not in page and "No output statistics in this report." in page

    rng = np.random.default_rng(0)
    without = [record(p, rng) for p in range(2)]
    for r in without:
        del r["output_stats"], r["input_stats"], r["timeline"]  # records of an older version
    page = Path(_summarise(without).save(str(tmp_path / "old.html"))).read_text(encoding="utf-8")
    assert "No timeline" in page and "No output statistics" in page
    assert page.count("<img") == 3  # latency, batch sizes, executors


def test_a_spark_job_report_loads_in_chromium_with_its_plots(spark, tmp_path):
    chromium()
    path = torchspark.export(
        torch.nn.Linear(4, 3), torch.randn(2, 4), os.path.join(tmp_path, "linear.pt")
    )
    columns = ", ".join(f"cast(randn({i}) as float)" for i in range(4))
    df = spark.range(0, 3000, 1, 3).selectExpr("id", f"array({columns}) as `x <i>`")
    scored = torchspark.predict(df, path, inputs="x <i>", keep=["id"], input_stats=True)
    scored.write.format("noop").mode("overwrite").save()
    report = torchspark.last_report()
    assert report.rows == 3000 and sorted(report.input_stats)[0] == "x <i>"
    page = Path(report.save(str(tmp_path / "job.html"))).read_text(encoding="utf-8")
    assert "<h2>Input distributions</h2>" in page and "x &lt;i&gt;[3]" in page
    started = time.monotonic()
    images, decoded = images_in_chromium(page, tmp_path)
    assert images == page.count("<img") == 6  # no bad rows: no plot of their reasons
    assert decoded == images
    assert time.monotonic() - started < CHROMIUM_TIMEOUT


def test_distribution_plots_follow_numpy_histograms(rng):
    """The plotted counts per bin, from the sketch, against numpy's histogram of the values."""
    from torchspark.spark.report_html import _counts_between
    from torchspark.spark.sketch import LogSketch

    for values in (
        np.concatenate([rng.normal(0.0, 1.0, 100_000), np.zeros(100)]),
        rng.beta(2.0, 5.0, 100_000),  # probabilities: many buckets per plot bin near 0
    ):
        edges = np.linspace(np.quantile(values, 0.005), np.quantile(values, 0.995), 41)
        expected, _ = np.histogram(values, edges)
        got = _counts_between(LogSketch.of(values), edges)
        assert np.abs(got - expected).max() <= 0.03 * expected.max()


def test_chromium_check_sees_a_broken_image(tmp_path):
    """The check can fail: an image that does not decode is not counted."""
    page = (
        "<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA'>"
        + "<img src='data:image/png;base64,"
        + base64.b64encode(_tiny_png()).decode()
        + "'></body></html>"
    )
    assert images_in_chromium(page, tmp_path) == (2, 1)


def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()
