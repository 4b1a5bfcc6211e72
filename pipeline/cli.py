"""The ``leadstream`` command. Thin: each command loads the settings and calls one function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from .settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from .core.scoring_model import EffectiveRules

app = typer.Typer(help="Leadstream: turn anonymous B2B website traffic into qualified, explainable leads.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
topics_app = typer.Typer(help="Create and describe the Kafka topics.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks, each reported as a ratio against a baseline measured in the same run.",
                        no_args_is_help=True)
leads_app = typer.Typer(help="The prospect list: ranked accounts, the people seen and why (see README).",
                        invoke_without_command=True)
model_app = typer.Typer(help="The scoring model the running workers use: promote, roll back, status, history.",
                        no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(leads_app, name="leads")
app.add_typer(bench_app, name="bench")
sinks_app = typer.Typer(help="Deliver qualified leads to each site's sinks (webhook, Slack, HubSpot, JSONL, email "
                        "nurture with its unsubscribe pages and inbound reply listener).",
                        invoke_without_command=True)
app.add_typer(sinks_app, name="sinks")
app.add_typer(model_app, name="model")
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


SiteOption = Annotated[Optional[str], typer.Option("--site", help="A site id from the settings' `sites:`")]


def _site_rules(settings: Settings, site_id: str) -> "EffectiveRules":
    from .core.scoring_model import ScoringModelError
    site = settings.site(site_id)
    if site is None:
        known = ", ".join(s.site_id for s in settings.sites) or "none configured"
        _fail(f"unknown site {site_id!r} (sites: {known})")
    try:
        return site.effective_rules(settings.load_scoring_model())
    except (ScoringModelError, ValueError) as exc:
        _fail(f"site {site_id!r}: {exc}")


def _require_salt(settings: Settings) -> None:
    """Refuse to run without a salt for email hashes (`up` generates and keeps one)."""
    problem = settings.missing_salt()
    if problem:
        _fail(problem)


@app.command()
def config(config: ConfigOption = None, site: SiteOption = None) -> None:
    """Print the effective settings (secrets masked) and exit; fails with the key path of any error.

    With --site S: the scoring rules that site runs with, the model's merged key by key with the
    site's `rules:` (and its `conversion_names`)."""
    settings = _settings(config)
    if site is None:
        typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
        return
    typer.echo(json.dumps({"site_id": site, **_site_rules(settings, site).model_dump(mode="json")}, indent=2))


@app.command()
def icp(site: Annotated[str, typer.Option("--site", help="A site id from the settings' `sites:`")],
        config: ConfigOption = None) -> None:
    """Print a site's ideal customer profile in plain words (its merged fit rules)."""
    from .core.fit import describe_icp
    settings = _settings(config)
    typer.echo(describe_icp(_site_rules(settings, site).fit))


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
    _require_salt(settings)
    serve(settings)


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run the stream worker (visitor and account stages); start more to share the partitions."""
    from .stages.main import run
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set (LEADSTREAM_KAFKA__BOOTSTRAP_SERVERS); "
              "use `leadstream up` to run with an embedded broker")
    _require_salt(settings)
    run(settings)


@sinks_app.callback()
def sinks(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run the sinks process: consume qualified-leads and deliver each lead to its site's sinks, once each."""
    if ctx.invoked_subcommand is not None:
        return
    from .sinks.runner import run as run_sinks
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set (LEADSTREAM_KAFKA__BOOTSTRAP_SERVERS); "
              "use `leadstream up` to run with an embedded broker")
    if not settings.redis.url_value:
        _fail("redis.url is not set (LEADSTREAM_REDIS__URL): the sinks keep their delivery state in Redis")
    from .observe import watch_sinks
    watch_sinks(settings)  # lag on qualified-leads, Redis and broker health (a thread, every metrics_interval_s)
    run_sinks(settings)


@sinks_app.command("retry-dead-letter")
def sinks_retry_dead_letter(
        site: Annotated[Optional[str], typer.Option(help="Only this site's dead letters")] = None,
        sink: Annotated[Optional[str], typer.Option(help="Only this sink's (its name in the site's sinks)")] = None,
        config: ConfigOption = None) -> None:
    """Schedule every new sink-dead-letter record for delivery again (the running sinks process delivers it)."""
    import asyncio

    from .sinks.redrive import redrive
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers or not settings.redis.url_value:
        _fail("kafka.bootstrap_servers and redis.url must be set")
    typer.echo(asyncio.run(redrive(settings, site, sink)).summary())


@sinks_app.command("hubspot-setup")
def sinks_hubspot_setup(config: ConfigOption = None) -> None:
    """Create Leadstream's custom properties (scores, reason, tier, model version) in each configured HubSpot."""
    import asyncio

    from .settings import HubSpotSinkSettings
    from .sinks.hubspot import LEAD_PROPERTIES, CRMError, HubSpot
    settings = _settings(config)
    targets = [(site.site_id, c) for site in settings.sites for c in site.sinks if isinstance(c, HubSpotSinkSettings)]
    if not targets:
        _fail("no hubspot sink is configured under any site's `sinks:`")

    async def setup_all() -> None:
        for site_id, cfg in targets:
            crm = HubSpot(cfg.token.get_secret_value(), cfg.base_url, cfg.portal_id, cfg.timeout_s)
            try:
                created = await crm.setup(LEAD_PROPERTIES, cfg.property_prefix)
            finally:
                await crm.aclose()
            typer.echo(f"{site_id}/{cfg.name}: created {', '.join(created) if created else 'nothing (all exist)'}")

    try:
        asyncio.run(setup_all())
    except CRMError as exc:
        _fail(str(exc), 1)


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
            check: Annotated[bool, typer.Option("--check", help="Validate only and say what would be imported; write nothing")] = False,
            map_: Annotated[Optional[list[str]], typer.Option(
                "--map", help="column=field: read a file's column as a field (repeatable), e.g. "
                "--map 'Company Domain Name=domain'")] = None,
            progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
            config: ConfigOption = None) -> None:
    """Load reference data into Redis, idempotently; every bad row is reported with its line number.
    Unknown columns are ignored with a warning that names them."""
    from .ops.importer import KINDS, ImportFileError, import_file, parse_column_map
    settings = _settings(config)
    _register_identity_kinds(settings)
    if kind not in KINDS:
        _fail(f"unknown kind {kind!r}: choose one of {', '.join(sorted(KINDS))}")
    if not file.is_file():
        _fail(f"no such file: {file}")
    if site is not None and settings.site(site) is None:
        _fail(f"unknown site {site!r}: add it under `sites:` in the settings file")
    try:
        column_map = parse_column_map(map_ or [])
    except ValueError as exc:
        _fail(str(exc))
    if kind in ("people", "identities"):
        _require_salt(settings)
    store = None
    if not check:
        if not settings.redis.url_value:
            _fail("redis.url is not set (LEADSTREAM_REDIS__URL); `leadstream up` prints the one it started")
        from .enrich.redis_store import ReferenceStore
        store = ReferenceStore.from_url(settings.redis.url_value)
    try:
        report = import_file(kind, file, store, site=site, progress=progress, column_map=column_map)
    except ImportFileError as exc:
        _fail(f"{file}: {exc}")
    typer.echo(report.summary())
    for warning in report.warnings:
        typer.echo(f"  warning: {warning}", err=True)
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


@app.command()
def forget(site: Annotated[Optional[str], typer.Option("--site", help="A site id from the settings' `sites:`")] = None,
           email: Annotated[Optional[str], typer.Option(help="The person's email address")] = None,
           visitor: Annotated[Optional[str], typer.Option(help="One of the person's visitor ids")] = None,
           person: Annotated[Optional[str], typer.Option(help="The person id")] = None,
           audit: Annotated[bool, typer.Option("--audit", help="List the site's erasure audit instead")] = False,
           count: Annotated[int, typer.Option(help="With --audit: the newest this many entries")] = 100,
           config: ConfigOption = None) -> None:
    """Erase a person everywhere: identity graph and profile in Redis, the workers' state and the
    compacted topics (through erasure records the stages apply in order), the prospect list, the
    sinks' email sequences; records an audit entry without personal data. Give exactly one of --email, --visitor, --person. See README, "Erasure"."""
    import asyncio

    from .ops.forget import ForgetError, forget as run_forget, read_audit
    settings = _settings(config)
    if site is None:
        _fail("--site is required")
    if settings.site(site) is None:
        known = ", ".join(s.site_id for s in settings.sites) or "none configured"
        _fail(f"unknown site {site!r} (sites: {known})")
    given = [(k, v) for k, v in (("email", email), ("visitor", visitor), ("person", person)) if v is not None]
    if audit:
        if given:
            _fail("--audit lists the audit: give no --email, --visitor or --person with it")
        for row in read_audit(_redis_url(settings), site, count):
            typer.echo(json.dumps(row))
        return
    if len(given) != 1:
        _fail("give exactly one of --email, --visitor or --person (or --audit to list past erasures)")
    kind, value = given[0]
    import redis.exceptions
    from aiokafka.errors import KafkaError
    try:
        report = asyncio.run(run_forget(settings, site, kind, value))  # type: ignore[arg-type]
    except ForgetError as exc:
        _fail(str(exc))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KafkaError, OSError) as exc:
        _fail(f"erasure not finished, {type(exc).__name__}: {exc}. Nothing is lost by running the same "
              "`forget` again once Redis and Kafka are reachable", 1)
    typer.echo(report.summary())
    if report.hook_errors:
        _fail("some sinks could not stop the person's sequences: run `forget` again once they are back", 1)


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


@app.command()
def replay(since: Annotated[str, typer.Option(help="Replay from the first pixel-events record written at or after "
                                              "this time: ISO 8601, epoch ms, or a duration ago (2h, 7d)")],
           model: Annotated[Path, typer.Option(help="The scoring model YAML to score with")],
           until: Annotated[Optional[str], typer.Option(help="Stop before the records written at this time "
                                                        "(default: the end of the topic when the command starts)")] = None,
           name: Annotated[Optional[str], typer.Option(help="Names the replay's topics <name>.qualified-leads ... "
                                                       "(default: replay-<UTC time>); must be new")] = None,
           progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
           json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
           config: ConfigOption = None) -> None:
    """Rescore history: run the stages over pixel-events with another model into topics of their own.

    Never writes the live topics, the live quota or the identity graph (read as it is now). Stops by itself at --until or at the end of the topic when it started, then prints a summary."""  # noqa: E501
    import time

    from .ops.replay import ReplayError, parse_time, run_replay
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set")
    now = int(time.time() * 1000)
    try:
        since_ms = parse_time(since, now)
        until_ms = parse_time(until, now) if until else None

        def done(summary: Any) -> None:
            typer.echo(json.dumps(summary.as_dict()) if json_ else summary.text())
            sys.stdout.flush()

        result = run_replay(settings, model, since_ms, until_ms, name=name, progress=progress, on_done=done)
    except ReplayError as exc:
        _fail(str(exc))
    if result is None:
        _fail("replay interrupted before its end", 130)


@app.command()
def compare(live: Annotated[str, typer.Argument(help="`live`, a replay's name, or a lead-scores / qualified-leads topic")],
            replay: Annotated[str, typer.Argument(help="A replay's name (or one of its topics)")],
            json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")] = False,
            limit: Annotated[int, typer.Option(help="Changed accounts shown per site")] = 50,
            min_delta: Annotated[float, typer.Option(help="Smallest fit or intent change reported")] = 0.5,
            config: ConfigOption = None) -> None:
    """Leads gained and lost, tier and score changes per site, between two runs (e.g. live and a replay)."""
    from .ops.compare import compare as compare_runs
    from .ops.compare import read_side, render
    settings = _settings(config)
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set")
    try:
        result = compare_runs(read_side(settings, live), read_side(settings, replay), min_delta=min_delta)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    if json_:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    from rich.console import Console
    Console(width=max(120, Console().width)).print(render(result, limit=limit))


def _registry(config: Path | None) -> Any:
    from .ops.models import ModelRegistry
    settings = _settings(config)
    if not settings.redis.url_value:
        _fail("redis.url is not set (LEADSTREAM_REDIS__URL): the active model lives in Redis")
    return ModelRegistry.from_url(settings.redis.url_value), settings


@model_app.command("promote")
def model_promote(file: Annotated[Path, typer.Argument(help="The scoring model YAML")],
                  by: Annotated[Optional[str], typer.Option(help="Who promotes (default: user@host)")] = None,
                  config: ConfigOption = None) -> None:
    """Make FILE the model every running worker scores with (they switch within stages.model_poll_s)."""
    from .core.scoring_model import ScoringModelError
    from .ops.models import ModelRegistryError
    registry, settings = _registry(config)
    if not file.is_file():
        _fail(f"no such file: {file}")
    try:
        switch = registry.promote(file.read_text(encoding="utf-8"), by=by, baseline=_configured_model_text(settings))
    except (ScoringModelError, ModelRegistryError) as exc:
        _fail(str(exc))
    typer.echo(f"promoted {switch.version} ({switch.digest}), replacing {switch.previous_version or 'the configured model'}"
               f"{f' ({switch.previous_digest})' if switch.previous_digest else ''}; workers switch within "
               f"{settings.stages.model_poll_s:g} s")


def _configured_model_text(settings: Settings) -> str:
    """The YAML of the model workers run when none is promoted (``scoring_model`` or the built-in one)."""
    if settings.scoring_model is not None:
        return Path(settings.scoring_model).read_text(encoding="utf-8")
    from importlib import resources
    return resources.files("pipeline.core").joinpath("default_model.yaml").read_text(encoding="utf-8")


@model_app.command("rollback")
def model_rollback(by: Annotated[Optional[str], typer.Option(help="Who rolls back (default: user@host)")] = None,
                   config: ConfigOption = None) -> None:
    """Make the model that was active before the last promotion active again."""
    from .ops.models import ModelRegistryError
    registry, settings = _registry(config)
    try:
        switch = registry.rollback(by=by)
    except ModelRegistryError as exc:
        _fail(str(exc))
    typer.echo(f"rolled back to {switch.version} ({switch.digest}) from {switch.previous_version} "
               f"({switch.previous_digest}); workers switch within {settings.stages.model_poll_s:g} s")


@model_app.command("status")
def model_status(config: ConfigOption = None) -> None:
    """The active model (or the configured one when none was promoted)."""
    from datetime import datetime, timezone
    registry, settings = _registry(config)
    active = registry.active()
    if active is None:
        model = settings.load_scoring_model()
        typer.echo(f"no model promoted: workers use {settings.scoring_model or 'the built-in model'}, "
                   f"{model.version} ({model.digest})")
        return
    at = datetime.fromtimestamp(active.at / 1000, tz=timezone.utc).isoformat(timespec="seconds")
    typer.echo(f"active: {active.version} ({active.digest}), since {at} by {active.by}")


@model_app.command("list")
def model_list(limit: Annotated[int, typer.Option(help="Entries shown, newest first")] = 50,
               json_: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
               config: ConfigOption = None) -> None:
    """Every model switch, newest first: when, what, by whom, and what it replaced."""
    from datetime import datetime, timezone
    registry, _ = _registry(config)
    for s in registry.history(limit):
        if json_:
            typer.echo(json.dumps(s.as_dict()))
            continue
        at = datetime.fromtimestamp(s.at / 1000, tz=timezone.utc).isoformat(timespec="seconds")
        typer.echo(f"{at}  {s.action:8}  {s.version} ({s.digest})  by {s.by}"
                   + (f"  replaced {s.previous_version} ({s.previous_digest})" if s.previous_digest else ""))


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


@bench_app.command("quality")
def bench_quality(
    seed: Annotated[int, typer.Option(help="The world's seed: every random choice of the labelled world")] = 1,
    server_side_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of visitors whose events a server-side tracker relays")] = 0.0,
    true_timestamp: Annotated[bool, typer.Option(
        "--true-timestamp", help="Also send Snowplow's true timestamp (ttm) with the history")] = False,
    fit_min: Annotated[Optional[float], typer.Option(help="Set the site's fit_min (default: the model's)")] = None,
    requests_per: Annotated[str, typer.Option(
        help="session: a tracker's offline queue flushes each session of history in one request; "
             "page: one request per page (bots always send one per page)")] = "session",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Precision, recall and F1 of the leads on a labelled world, through the real collector and worker, next to a naive rule."""
    from loadtest.bench_quality import bench, format_report
    if requests_per not in ("session", "page"):
        _fail("--requests-per: session or page")
    report = bench(seed, server_side_share, true_timestamp=true_timestamp, fit_min=fit_min, per=requests_per)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@leads_app.callback()
def leads(ctx: typer.Context,
          site: Annotated[Optional[str], typer.Option(help="Site id (default: the only configured site)")] = None,
          tier: Annotated[Optional[str], typer.Option(
              help="Only this status: qualified, warming, cold, filtered, customer, not_seen")] = None,
          min_fit: Annotated[Optional[float], typer.Option(help="Fit at least")] = None,
          min_intent: Annotated[Optional[float], typer.Option(help="Intent at least")] = None,
          country: Annotated[Optional[str], typer.Option(help="ISO country code, e.g. DE")] = None,
          seen: Annotated[Optional[bool], typer.Option("--seen/--not-seen", help="Only seen / not-yet-seen accounts")] = None,
          limit: Annotated[int, typer.Option(help="Rows to show")] = 50,
          as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
          as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table")] = False,
          config: ConfigOption = None) -> None:
    """The ranked prospect list of a site (read from the view that `leads serve` keeps current)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"site": site, "config": config}
        return
    from .leads.report import as_csv as to_csv, as_json as to_json, fetch_rows, table
    from .leads.view import Filter
    settings = _settings(config)
    site_id = _leads_site(settings, site)
    try:
        f = Filter(status=tier, min_fit=min_fit, min_intent=min_intent, country=country, seen=seen)
    except ValueError as exc:
        _fail(str(exc))
    rows = fetch_rows(_redis_url(settings), site_id, f, limit)
    typer.echo(to_json(rows) if as_json else to_csv(rows) if as_csv else table(rows, site_id), nl=False)


def _leads_site(settings: Settings, site: str | None) -> str:
    if site is None:
        if len(settings.sites) != 1:
            _fail("several sites are configured: choose one with --site")
        return settings.sites[0].site_id
    if settings.site(site) is None:
        _fail(f"unknown site {site!r}: add it under `sites:` in the settings file")
    return site


def _redis_url(settings: Settings) -> str:
    url = settings.redis.url_value
    if url is None:
        _fail("redis.url is not set (LEADSTREAM_REDIS__URL): the prospect list lives in Redis")
    return url


@leads_app.command("show")
def leads_show(ctx: typer.Context, domain: Annotated[str, typer.Argument(help="The account's domain")],
               as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text")] = False) -> None:
    """One account in full: rule contributions, people, sessions, pages, identity, filters, model."""
    from .leads.report import account_text, fetch_account
    settings = _settings(ctx.obj["config"])
    site_id = _leads_site(settings, ctx.obj["site"])
    account = fetch_account(_redis_url(settings), site_id, domain)
    if account is None:
        _fail(f"no account {domain!r} in {site_id}'s list")
    typer.echo(json.dumps(account, indent=2) if as_json else account_text(account))


@leads_app.command("serve")
def leads_serve(ctx: typer.Context) -> None:
    """Keep the list current from lead-scores and serve its API and page on leads.port."""
    from .leads.service import serve
    settings = _settings(ctx.obj["config"])
    if not settings.kafka.bootstrap_servers:
        _fail("kafka.bootstrap_servers is not set (LEADSTREAM_KAFKA__BOOTSTRAP_SERVERS)")
    _redis_url(settings)
    serve(settings)


@leads_app.command("token")
def leads_token(ctx: typer.Context) -> None:
    """Make a new API token for a site: prints the token (give it to the user) and the hash to add
    to the site's `api_tokens` in the settings file."""
    from .leads.api import new_token
    token, digest = new_token()
    typer.echo(f"token: {token}\nadd to the site's api_tokens: {digest}")


@bench_app.command("leads")
def bench_leads(
    accounts: Annotated[int, typer.Option(help="Accounts of one site in the view")] = 100_000,
    requests: Annotated[int, typer.Option(help="Timed API requests per filter")] = 300,
) -> None:
    """The prospect list: view updates per score change and per second, Redis memory per account,
    and p50/p99 of GET /leads?limit=50 with each filter against a /health baseline."""
    from loadtest.bench_leads import bench
    report = bench(accounts=accounts, requests=requests)
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
