"""The ``nightrec`` command line.

Exit codes: 0 done; 1 the run failed (its error is printed once, at the end;
``--debug`` adds the traceback); 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _prefect_defaults() -> None:
    # No telemetry from the temporary local server (this machine may be offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2024-06-30, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightrec", description="Nightly batch recommender pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--config", help="YAML config file (defaults when omitted)")
        command.add_argument("--warehouse", help="override the warehouse root of the config")
        command.add_argument("--debug", action="store_true", help="print the traceback of a failure")

    nightly = sub.add_parser("nightly", help="run the nightly flow for one date")
    nightly.add_argument("--ds", type=_date, required=True, help="run date YYYY-MM-DD")
    run_options(nightly)
    nightly.add_argument("--json", action="store_true", help="print the summary as JSON")

    backfill = sub.add_parser("backfill", help="run the nightly flow for every date in a range")
    backfill.add_argument("--start", type=_date, required=True, help="first date YYYY-MM-DD")
    backfill.add_argument("--end", type=_date, required=True, help="last date YYYY-MM-DD (inclusive)")
    run_options(backfill)

    show = sub.add_parser("config", help="validate a config file and print the effective config")
    show.add_argument("--config", help="YAML config file (defaults when omitted)")
    return parser


class _ErrorsOnce(logging.Filter):
    """Drops the engine's own reports of a failure (with their tracebacks): the CLI prints the error once."""

    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.levelno >= logging.ERROR and record.exc_info
        return not (failure or "Finished in state Failed" in record.getMessage())


def _quiet_failures() -> None:
    """Attach ``_ErrorsOnce`` to Prefect's console handlers (the API handlers still record the failure)."""
    import prefect.main  # noqa: F401  (sets up Prefect's logging)
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.addFilter(_ErrorsOnce())


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Spark's errors carry the JVM's stack after the message: the message is what a person can act on.
    return text.split("\n\tat ", 1)[0].split("\nJVM stacktrace:", 1)[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_defaults()
    from flows.config import ConfigError, load_config

    overrides = {"warehouse": args.warehouse} if getattr(args, "warehouse", None) else None
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"nightrec: config error\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return EXIT_OK
    if args.command == "backfill" and args.end < args.start:
        print(f"nightrec: --end {args.end} is before --start {args.start}", file=sys.stderr)
        return EXIT_USAGE

    from flows.nightly import nightly

    if not args.debug:
        _quiet_failures()
    days = [args.ds] if args.command == "nightly" else \
        [args.start + dt.timedelta(days=n) for n in range((args.end - args.start).days + 1)]
    for day in days:
        try:
            summary = nightly(ds=day, config=cfg)
        except Exception as exc:
            if args.debug:
                import traceback

                traceback.print_exc()
            hint = "" if args.debug else " (run with --debug for the traceback)"
            print(f"nightrec: the run for ds={day} failed{hint}:\n{_error_text(exc)}", file=sys.stderr)
            return EXIT_FAILED
        print(summary.to_json() if getattr(args, "json", False) else summary.format(), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
