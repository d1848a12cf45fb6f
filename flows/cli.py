"""The ``nightrec`` command line."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys


def _prefect_defaults() -> None:
    # No telemetry from the temporary local server (this machine may be offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2024-06-30, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightrec", description="Nightly batch recommender pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    nightly = sub.add_parser("nightly", help="run the nightly flow for one date")
    nightly.add_argument("--ds", type=_date, required=True, help="run date YYYY-MM-DD")
    nightly.add_argument("--config", help="YAML config file (defaults when omitted)")
    nightly.add_argument("--warehouse", help="override the warehouse root of the config")
    nightly.add_argument("--json", action="store_true", help="print the summary as JSON")

    backfill = sub.add_parser("backfill", help="run the nightly flow for every date in a range")
    backfill.add_argument("--start", type=_date, required=True, help="first date YYYY-MM-DD")
    backfill.add_argument("--end", type=_date, required=True, help="last date YYYY-MM-DD (inclusive)")
    backfill.add_argument("--config", help="YAML config file")
    backfill.add_argument("--warehouse", help="override the warehouse root of the config")

    show = sub.add_parser("config", help="validate a config file and print the effective config")
    show.add_argument("--config", help="YAML config file (defaults when omitted)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_defaults()
    from flows.config import ConfigError, load_config

    overrides = {"warehouse": args.warehouse} if getattr(args, "warehouse", None) else None
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"nightrec: config error\n{exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0

    if args.command == "backfill":
        start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
        if end < start:
            print(f"nightrec: --end {args.end} is before --start {args.start}", file=sys.stderr)
            return 2

    from flows.nightly import format_summary, nightly, summary_json

    config = cfg.model_dump(mode="json")
    if args.command == "nightly":
        summary = nightly(ds=args.ds, config=config)
        print(summary_json(summary) if args.json else format_summary(summary))
        return 0
    day = start
    while day <= end:
        summary = nightly(ds=day.isoformat(), config=config)
        print(format_summary(summary))
        day += dt.timedelta(days=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
