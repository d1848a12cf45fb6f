"""``nightrec report`` on a two-night backfill: one self-contained HTML file, every image a valid PNG."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import shutil
import subprocess

import pytest
import yaml

from jobs.storage import Location
from tests.fixtures.tiny_night import SMALL

D1, D2 = "2024-03-31", "2024-04-01"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def warehouse(spark, prefect_server, tmp_path_factory):
    """A warehouse with nights D1 and D2 committed by the backfill flow (SMALL config), and its config file."""
    from flows.backfill import backfill
    from flows.config import parse_config

    root = tmp_path_factory.mktemp("report")
    config = {**SMALL, "warehouse": str(root / "wh")}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    results = backfill(start=dt.date.fromisoformat(D1), end=dt.date.fromisoformat(D2),
                       config=parse_config(config, "test config"))
    assert [r.status for r in results] == ["committed", "committed"], results
    return root


def _report(tmp_path, warehouse, *args: str) -> tuple[int, str]:
    from flows import cli

    out = tmp_path / "report.html"
    code = cli.main(["report", "--config", str(warehouse / "c.yaml"), "--out", str(out), *args])
    return code, out.read_text() if out.exists() else ""


def test_the_report_of_two_nights_has_every_section_and_valid_pngs(warehouse, tmp_path, capsys):
    import matplotlib.image

    code, page = _report(tmp_path, warehouse, "--start", D1, "--end", D2)
    assert code == 0, capsys.readouterr().err
    assert f"report of 2 night(s) ({D1} to {D2})" in capsys.readouterr().out
    for heading in ("Metrics by model against the baselines", "Metrics over the nights", "Slices",
                    "Score distributions", "Item exposure", "Quarantine"):
        assert f"<h2>{heading}</h2>" in page
    images = IMAGE.findall(page)
    alts = [alt for alt, _ in images]
    assert {"holdout metrics by model and scorer", "metrics over the nights", "score distributions",
            "item exposure"} <= set(alts)
    for alt, data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG_SIGNATURE), alt
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50, alt
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "two_tower / popularity" in page or "popularity" in page


def test_one_night_renders_notes_instead_of_a_trend(warehouse, tmp_path, capsys):
    code, page = _report(tmp_path, warehouse, "--ds", D2)
    assert code == 0, capsys.readouterr().err
    assert f"One night only ({D2})" in page
    assert "metrics over the nights" not in [alt for alt, _ in IMAGE.findall(page)]


def test_a_night_that_was_not_committed_is_a_usage_error_naming_the_committed_ones(warehouse, tmp_path, capsys):
    code, _ = _report(tmp_path, warehouse, "--ds", "2024-05-01")
    assert code == 2
    err = capsys.readouterr().err
    assert "--ds 2024-05-01: no committed night for that date" in err and f"committed: {D1}, {D2}" in err


def test_a_missing_quarantine_table_is_a_note(warehouse, tmp_path):
    from jobs.report import render_report

    copy = tmp_path / "wh"
    shutil.copytree(warehouse / "wh", copy)
    shutil.rmtree(copy / "quarantine")
    page = render_report(Location(str(copy)), [D1, D2])
    assert "No quarantine table in these nights." in page


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_the_report_opens_in_headless_chromium_with_no_missing_resource(warehouse, tmp_path):
    code, page = _report(tmp_path, warehouse)
    assert code == 0
    url = (tmp_path / "report.html").as_uri()
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<h2>Item exposure</h2>" in proc.stdout
    assert "ERR_FILE_NOT_FOUND" not in proc.stderr and "Failed to load resource" not in proc.stderr
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", url], capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
