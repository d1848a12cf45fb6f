"""The ``nightrec`` command line.

Exit codes: 0 done; 1 a run failed (its error is printed once, at the end;
``--debug`` adds the traceback); 2 a usage or config error; 3 refused: another
live run of that ds holds its lock; 4 held back by the quality gate.

Every command first completes any commit a killed run left half-done
(``jobs.commit.recover``), so readers never wait for the next night.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_HELD_BACK = 0, 1, 2, 3, 4


def _prefect_defaults() -> None:
    # No telemetry from the temporary local server (this machine may be offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # The temporary server's default 20 s to start is too short on a busy machine (it imports the whole server).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2024-06-30, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightrec", description="Nightly batch recommender pipeline.",
                                     epilog="exit codes: 0 done, 1 failed, 2 usage or config error, "
                                            "3 refused by another run's lock, 4 held back by the quality gate")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--config", help="YAML config file (defaults when omitted)")
        command.add_argument("--warehouse", help="override the warehouse root of the config")

    def run_options(command: argparse.ArgumentParser) -> None:
        config_options(command)
        command.add_argument("--fresh", action="store_true",
                             help="start over instead of reusing the finished steps of a failed attempt")
        command.add_argument("--debug", action="store_true", help="print the traceback of a failure")
        command.add_argument("--publish-anyway", action="store_true",
                             help="publish models the quality gate holds back (recorded in the manifests)")

    nightly = sub.add_parser("nightly", help="run the nightly flow for one date")
    nightly.add_argument("--ds", type=_date, help="run date YYYY-MM-DD (default: yesterday in schedule.timezone)")
    run_options(nightly)
    nightly.add_argument("--json", action="store_true", help="print the summary as JSON")

    backfill = sub.add_parser("backfill", help="run the nightly flow for every date in a range")
    backfill.add_argument("--start", type=_date, required=True, help="first date YYYY-MM-DD")
    backfill.add_argument("--end", type=_date, required=True, help="last date YYYY-MM-DD (inclusive)")
    backfill.add_argument("--force", action="store_true", help="run dates that are already committed again")
    backfill.add_argument("--max-concurrency", type=int, default=1, metavar="N", help="dates run side by side")
    run_options(backfill)

    serve = sub.add_parser("serve", help="run the nightly flow on the config's schedule (Prefect serve)")
    config_options(serve)

    deploy = sub.add_parser("deploy", help="register the nightly and backfill deployments with a Prefect server")
    deploy.add_argument("--work-pool", required=True, help="the process work pool the workers poll")
    config_options(deploy)

    tables = sub.add_parser("tables", help="print the latest committed partition of each table")
    tables.add_argument("--model", help="only the tables of this model (and the night's shared tables)")
    tables.add_argument("--json", action="store_true", help="print JSON")
    config_options(tables)

    report = sub.add_parser("report", help="write an HTML report of committed nights (metrics, exposure, ...)")
    report.add_argument("--ds", type=_date, help="only this night (default: every committed night)")
    report.add_argument("--start", type=_date, help="first night YYYY-MM-DD of a range")
    report.add_argument("--end", type=_date, help="last night YYYY-MM-DD of a range (inclusive)")
    report.add_argument("--out", default="nightrec-report.html", help="the HTML file to write")
    config_options(report)

    benchmark_options(sub)

    show = sub.add_parser("config", help="validate a config file and print the effective config")
    show.add_argument("--config", help="YAML config file (defaults when omitted)")
    return parser


def benchmark_options(sub) -> None:
    """The ``benchmark`` subcommand: train and evaluate models offline on a dataset (``flows.benchmark``)."""
    from flows.benchmark import FORMATS, PROTOCOLS

    bench = sub.add_parser("benchmark", help="train and evaluate models and baselines offline on a dataset")
    bench.add_argument("--dataset", required=True, help="the dataset's folder (or the interactions file: files)")
    bench.add_argument("--format", required=True, choices=FORMATS, help="how the dataset is laid out")
    bench.add_argument("--protocol", default="stratified", choices=PROTOCOLS,
                       help="the split (docs/evaluation.md); default stratified")
    bench.add_argument("--config", help="YAML config whose models: are benchmarked (default: the benchmark's set)")
    bench.add_argument("--only", default="", help="comma-separated model names to train (baselines always run)")
    bench.add_argument("--max-epochs", type=int, default=30, help="epochs of early stopping at most")
    bench.add_argument("--als-grid", default="tuned", choices=("tuned", "defaults"),
                       help="ALS tuned by a grid on the validation split, or Spark's usual settings only (faster)")
    bench.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    bench.add_argument("--debug", action="store_true", help="print the traceback of a failure")


def _report(cfg, args) -> int:
    from jobs.report import ReportError, select_nights, write_report
    from jobs.storage import Location

    if args.ds and (args.start or args.end):
        print("nightrec: report takes --ds or --start/--end, not both", file=sys.stderr)
        return EXIT_USAGE
    warehouse = Location(cfg.warehouse)
    try:
        nights = select_nights(warehouse, ds=args.ds, start=args.start, end=args.end)
        out = write_report(warehouse, nights, Location(args.out))
    except ReportError as exc:
        print(f"nightrec: report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"report of {len(nights)} night(s) ({nights[0]} to {nights[-1]}): {out.display()}")
    return EXIT_OK


def _benchmark(cfg, args) -> int:
    from flows.benchmark import DatasetError, benchmark_rows, format_rows, json_rows

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        rows = benchmark_rows(cfg if args.config else None, dataset=args.dataset, format=args.format,
                              protocol=args.protocol, only={n for n in args.only.split(",") if n},
                              max_epochs=args.max_epochs, als_grid=args.als_grid, log=progress)
    except DatasetError as exc:
        print(f"nightrec: benchmark: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        return _failed("the benchmark", exc, args.debug)
    print(json.dumps(json_rows(rows), indent=2) if args.json else format_rows(rows), flush=True)
    return EXIT_OK


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


def _failed(what: str, exc: BaseException, debug: bool) -> int:
    from jobs.run_lock import RunLockedError

    if debug:
        import traceback

        traceback.print_exc()
    hint = "" if debug else " (run with --debug for the traceback)"
    if isinstance(exc, RunLockedError):
        print(f"nightrec: {what} refused: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    print(f"nightrec: {what} failed{hint}:\n{_error_text(exc)}", file=sys.stderr)
    return EXIT_FAILED


def _tables(cfg, args) -> int:
    from jobs import commit
    from jobs.storage import Location

    warehouse = Location(cfg.warehouse)
    found = commit.committed_partitions(warehouse, model=args.model)
    for entry in found.values():
        entry["location"] = (warehouse / entry.pop("path")).display()
    if args.json:
        print(json.dumps(found, indent=2))
    elif not found:
        print(f"no committed night in {warehouse.display()}")
    else:
        width = max(len(t) for t in found)
        for table, entry in found.items():
            print(f"{table:<{width}}  ds={entry['ds']}  run={entry['run_id']}  {entry['location']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_defaults()
    from flows.config import ConfigError, load_config

    overrides = {"warehouse": args.warehouse} if getattr(args, "warehouse", None) else None
    try:
        cfg = load_config(args.config, overrides)
        if getattr(args, "publish_anyway", False):
            cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"publish_anyway": True})})
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
    if args.command == "backfill" and args.max_concurrency < 1:
        print(f"nightrec: --max-concurrency must be at least 1, got {args.max_concurrency}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "benchmark":
        return _benchmark(cfg, args)

    from jobs import commit
    from jobs.storage import Location

    commit.recover(Location(cfg.warehouse), lambda line: print(f"nightrec: {line}", file=sys.stderr))
    if args.command == "tables":
        return _tables(cfg, args)
    if args.command == "report":
        return _report(cfg, args)
    if args.command == "serve":
        from flows.deployments import serve

        serve(cfg)
        return EXIT_OK
    if args.command == "deploy":
        from flows.deployments import deploy

        try:
            ids = deploy(cfg, args.work_pool)
        except Exception as exc:
            return _failed("deploy", exc, debug=False)
        for name, ident in ids.items():
            print(f"deployment {name}: {ident}")
        return EXIT_OK

    if not args.debug:
        _quiet_failures()
    if args.command == "nightly":
        from flows.nightly import nightly

        from flows.nightly import HeldBack

        try:
            summary = nightly(ds=args.ds, config=cfg, fresh=args.fresh)
        except HeldBack as exc:
            print(exc.summary.to_json() if args.json else exc.summary.format(), flush=True)
            print(f"nightrec: ds={exc.summary.ds} committed, but {exc}", file=sys.stderr)
            return EXIT_HELD_BACK
        except Exception as exc:
            return _failed(f"the run for ds={args.ds or 'yesterday'}", exc, args.debug)
        print(summary.to_json() if args.json else summary.format(), flush=True)
        return EXIT_OK

    from flows.backfill import backfill, format_results

    try:
        results = backfill(start=args.start, end=args.end, config=cfg, force=args.force,
                           max_concurrency=args.max_concurrency, fresh=args.fresh)
    except Exception as exc:
        return _failed("the backfill", exc, args.debug)
    print(format_results(results), flush=True)
    if any(r.status == "failed" for r in results):
        return EXIT_FAILED
    return EXIT_HELD_BACK if any(r.status == "held_back" for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
