import subprocess
import sys

import yaml

from flows.cli import build_parser, main


def test_config_command_prints_effective_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("publish:\n  k: 3\n")
    assert main(["config", "--config", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["publish"]["k"] == 3
    assert printed["evaluation"]["k"] == 10


def test_bad_config_exits_2_with_the_key_in_the_message(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("publsh:\n  k: 3\n")
    assert main(["nightly", "--ds", "2024-06-30", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'publsh'" in err and "publish" in err


def test_bad_dates_are_refused_by_the_parser():
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "nightly", "--ds", "30/06/2024"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "expected a date like 2024-06-30, got '30/06/2024'" in proc.stderr


def test_backfill_range_must_be_ordered(capsys):
    assert main(["backfill", "--start", "2024-06-05", "--end", "2024-06-01"]) == 2
    assert "before --start" in capsys.readouterr().err


def test_warehouse_override():
    args = build_parser().parse_args(["nightly", "--ds", "2024-06-30", "--warehouse", "/tmp/x"])
    assert args.warehouse == "/tmp/x"
