"""The ``leadstream`` command. Thin: each command loads the settings and calls one function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from .settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Leadstream: turn anonymous B2B website traffic into qualified, explainable leads.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
topics_app = typer.Typer(help="Create and describe the Kafka topics.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks, each reported as a ratio against a baseline measured in the same run.",
                        no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(bench_app, name="bench")
bad_rows_app = typer.Typer(help="List and replay bad rows (bad-events) after a fix.", no_args_is_help=True)
app.add_typer(bad_rows_app, name="bad-rows")

ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML settings file (default: $LEADSTREAM_CONFIG or ./leadstream.yaml)")]


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    level = {"warn": logging.WARNING}.get(settings.log_level, getattr(logging, settings.log_level.upper()))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def config(config: ConfigOption = None) -> None:
    """Print the effective settings (secrets masked) and exit; fails with the key path of any error."""
    settings = _settings(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


@app.command()
def up(config: ConfigOption = None,
       demo: Annotated[bool, typer.Option(help="Load the synthetic demo data and drive simulated visitors")] = False,
       real_kafka: Annotated[bool, typer.Option(
           "--real-kafka", help="Run a real Apache Kafka broker (needs Java and Maven) so local data survives restarts")] = False,
       ) -> None:
    """Run everything on this machine: broker, Redis, topics, collector and workers. Ctrl-C stops it all."""
    from .local.up import run_up
    run_up(_settings(config), demo=demo, real_kafka=real_kafka)


@app.command()
def collector(config: ConfigOption = None) -> None:
    """Run the HTTP ingest endpoint (pixel.js, /p.gif, /collect, Snowplow /i and tp2)."""
    from .collector.server import serve
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set (LEADSTREAM_KAFKA__BOOTSTRAP_SERVERS); "
              "use `leadstream up` to run with an embedded broker")
    serve(settings)


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run the stream worker (visitor and account stages); start more to share the partitions."""
    from .stages.main import run
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set (LEADSTREAM_KAFKA__BOOTSTRAP_SERVERS); "
              "use `leadstream up` to run with an embedded broker")
    run(settings)


@app.command()
def tail(topic: Annotated[str, typer.Argument(help="qualified-leads, lead-scores, visits, pixel-events, bad-events "
                                                   "(or the configured name)")],
         from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record")] = True,
         follow: Annotated[bool, typer.Option(help="Keep waiting for new records")] = False,
         limit: Annotated[int, typer.Option(help="Stop after this many records (0: no limit)")] = 0,
         config: ConfigOption = None) -> None:
    """Print a topic's records as JSON lines, decoded with the schemas (no consumer group, commits nothing)."""
    from .ops.tail import tail_topic
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set")
    try:
        for line in tail_topic(settings, topic, from_beginning=from_beginning, follow=follow, limit=limit):
            typer.echo(line)
    except KeyError as exc:
        _fail(str(exc.args[0]))


@app.command()
def snippet(site_id: str, config: ConfigOption = None) -> None:
    """Print the <script> tag to paste into the pages of SITE_ID."""
    from .collector.snippet import snippet as make_snippet
    settings = _settings(config)
    if settings.site(site_id) is None:
        _fail(f"unknown site {site_id!r}: add it under `sites:` in the settings file")
    typer.echo(make_snippet(settings, site_id))


@app.command("demo-traffic")
def demo_traffic(url: Annotated[str, typer.Option(help="The collector on 127.0.0.1, e.g. http://127.0.0.1:8080")],
                 site: Annotated[str, typer.Option(help="Site id to send as")] = "demo",
                 duration: Annotated[float, typer.Option(help="Stop after this many seconds")] = 90.0,
                 rate: Annotated[float, typer.Option(help="At most this many requests per second")] = 5.0,
                 seed: Annotated[Optional[int], typer.Option(help="Random seed, for the same visitors again")] = None,
                 ) -> None:
    """Send simulated demo visitors (buyers, researchers, ISP, bots, public sector, job seekers) to a local collector."""
    from loadtest.simulator import check_local_url, expectations, run_simulation
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_local_url(url)
        for who, expect in expectations():
            typer.echo(f"  {who}\n      -> {expect}")
        report = run_simulation(url, site_id=site, duration_s=duration, rate=rate, seed=seed, on_progress=typer.echo)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc), 1)
    typer.echo(report.summary())
    if report.failures:
        _fail(f"failed requests: {dict(report.failures)}", 1)


@app.command("import")
def import_(kind: Annotated[str, typer.Argument(help="companies | ip-ranges | asn-types | people | identities")],
            file: Annotated[Path, typer.Argument(help="CSV with a header row, or JSON Lines (.jsonl); .gz accepted")],
            site: Annotated[Optional[str], typer.Option(help="Import into one site's namespace (default: all sites)")] = None,
            check: Annotated[bool, typer.Option("--check", help="Validate only; write nothing")] = False,
            progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
            config: ConfigOption = None) -> None:
    """Load reference data into Redis, idempotently; every bad row is reported with its line number."""
    from .ops.importer import KINDS, ImportFileError, import_file
    settings = _settings(config)
    _register_identity_kinds(settings)
    if kind not in KINDS:
        _fail(f"unknown kind {kind!r}: choose one of {', '.join(sorted(KINDS))}")
    if not file.is_file():
        _fail(f"no such file: {file}")
    if site is not None and settings.site(site) is None:
        _fail(f"unknown site {site!r}: add it under `sites:` in the settings file")
    store = None
    if not check:
        if not settings.redis.url_value:
            _fail("redis.url is not set (LEADSTREAM_REDIS__URL); `leadstream up` prints the one it started")
        from .enrich.redis_store import ReferenceStore
        store = ReferenceStore.from_url(settings.redis.url_value)
    try:
        report = import_file(kind, file, store, site=site, progress=progress)
    except ImportFileError as exc:
        _fail(f"{file}: {exc}")
    typer.echo(report.summary())
    for line, reason in report.errors[:200]:
        typer.echo(f"  line {line}: {reason}", err=True)
    if len(report.errors) > 200:
        typer.echo(f"  ... and {len(report.errors) - 200} more bad rows", err=True)
    if not report.ok:
        raise typer.Exit(1)


def _register_identity_kinds(settings: Settings) -> None:
    """People and identities need the identity store; registered when that module is present."""
    try:
        from .ops.identity_import import register as register_identity_kinds
    except ImportError:
        return
    register_identity_kinds(settings)


@topics_app.command("create")
def topics_create(config: ConfigOption = None) -> None:
    """Create every missing topic with the catalogue's partitions, retention and compaction."""
    from .topology import create_topics
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set")
    try:
        created = create_topics(settings)
    except RuntimeError as exc:
        _fail(str(exc), 1)
    typer.echo("created: " + (", ".join(created) if created else "nothing (all topics exist)"))


@topics_app.command("describe")
def topics_describe(config: ConfigOption = None) -> None:
    """List each topic with its key, value schema, partitions, retention and compaction."""
    from .topology import topic_specs
    settings = _settings(config)
    for spec in topic_specs(settings):
        typer.echo(f"{spec.name:20} value={spec.value_schema:16} partitions={spec.partitions:<3} "
                   f"retention_ms={spec.retention_ms} compacted={spec.compacted}\n    key: {spec.key}")


TypeOption = Annotated[Optional[str], typer.Option(
    "--type", help="Failure type (README 'Bad rows'), e.g. processing_failure, schema_violation, site_violation")]
SinceOption = Annotated[Optional[str], typer.Option(
    help="Only rows written since: an age (30m, 2h, 7d), an ISO time (UTC by default) or epoch ms")]


def _bad_row_filters(failure_type: str | None, since: str | None) -> tuple[str | None, int | None]:
    from .core.failures import FailureType
    from .ops.bad_rows import parse_since
    if failure_type is not None and failure_type not in {t.value for t in FailureType}:
        _fail(f"unknown failure type {failure_type!r}: one of {', '.join(t.value for t in FailureType)}")
    try:
        return failure_type, parse_since(since) if since is not None else None
    except ValueError as exc:
        _fail(str(exc))


@bad_rows_app.command("list")
def bad_rows_list(failure_type: TypeOption = None, since: SinceOption = None,
                  stage: Annotated[Optional[str], typer.Option(help="collector, visitor or account")] = None,
                  full: Annotated[bool, typer.Option(help="Print whole payloads (default: the first 200 characters)")] = False,
                  config: ConfigOption = None) -> None:
    """Print the bad rows as JSON lines (split rows joined), oldest first; commits nothing."""
    from .ops.bad_rows import read_bad_rows
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set")
    kind, since_ms = _bad_row_filters(failure_type, since)
    for row in read_bad_rows(settings, failure_type=kind, since_ms=since_ms, stage=stage):
        if not full and len(row["payload"]) > 200:
            row = {**row, "payload": row["payload"][:200] + "..."}
        typer.echo(json.dumps(row, default=str))


@bad_rows_app.command("replay")
def bad_rows_replay(failure_type: Annotated[str, typer.Option("--type", help="Failure type to replay")],
                    since: Annotated[str, typer.Option(help="Rows written since: 30m, 2h, 7d, an ISO time or epoch ms")],
                    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be sent")] = False,
                    config: ConfigOption = None) -> None:
    """Put the original payloads of visitor-stage bad rows back on pixel-events (idempotent by event)."""
    from .ops.bad_rows import read_bad_rows, replay_bad_rows, replay_plan
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set")
    kind, since_ms = _bad_row_filters(failure_type, since)
    rows = read_bad_rows(settings, failure_type=kind, since_ms=since_ms)
    if dry_run:
        from .codec import make_codec
        from .topology import topic_specs
        spec = {s.logical: s for s in topic_specs(settings)}["pixel_events"]
        _, report = replay_plan(rows, spec.partitions, make_codec(settings.kafka.schema_registry_url), spec.name)
    else:
        report = replay_bad_rows(settings, rows)
    typer.echo(("would send: " if dry_run else "") + report.summary())


@bench_app.command("collector")
def bench_collector(
    duration: Annotated[int, typer.Option(help="Seconds of load per server")] = 15,
    connections: Annotated[int, typer.Option(help="Concurrent keep-alive connections")] = 64,
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this Kafka instead of starting a real broker")] = None,
    linger_ms: Annotated[float, typer.Option(help="Collector linger (batching window)")] = 5.0,
) -> None:
    """Collector requests/s and p50/p99 with durable writes, against a null app on the same stack."""
    from loadtest.bench_collector import bench
    report = bench(duration_s=duration, connections=connections, bootstrap=bootstrap, linger_ms=linger_ms)
    typer.echo(json.dumps(report, indent=2))
    if not report["pass"]:
        raise typer.Exit(1)


@bench_app.command("pipeline")
def bench_pipeline(
    events: Annotated[int, typer.Option(help="Events in the input")] = 60_000,
    payloads_per_record: Annotated[int, typer.Option(help="HTTP requests (5 events each) per pixel-events record")] = 20,
    latency_seconds: Annotated[float, typer.Option(help="Seconds of paced load for the latency measurement")] = 20,
) -> None:
    """Events/s through both stages on one worker vs a raw aiokafka loop; p50/p99 hit-to-output latency."""
    from loadtest.bench_pipeline import bench
    report = bench(events=events, payloads_per_record=payloads_per_record, latency_seconds=latency_seconds)
    typer.echo(json.dumps(report, indent=2))
    if not report["pass"]:
        raise typer.Exit(1)


@bench_app.command("state")
def bench_state(
    visitors: Annotated[int, typer.Option(help="Visitors to run through the visitor stage")] = 1_000_000,
    retention_days: Annotated[float, typer.Option(help="Idle-state retention in event time (0: keep everything)")] = 7.0,
    checkpoints: Annotated[int, typer.Option(help="Report rows over the run")] = 10,
) -> None:
    """Memory, state/changelog bytes and recovery time per active visitor as total history grows."""
    from loadtest.bench_state import bench
    logging.basicConfig(level=logging.ERROR)
    report = bench(visitors=visitors, retention_days=retention_days, checkpoints=checkpoints,
                   on_progress=lambda row: typer.echo(json.dumps(row), err=True))
    typer.echo(json.dumps(report, indent=2))
    if not report["pass"]:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
