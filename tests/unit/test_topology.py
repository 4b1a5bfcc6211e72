"""The map matches the house: topology.py names only what exists, the worker is wired from its
stage <-> topic table, every key comes from its key functions, and the runtime processes do not
import the local stack or the load tools."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pipeline.topology as topology
from pipeline.codec import SchemaCatalogue
from pipeline.stages.main import build_handlers
from pipeline.topology import STAGES, account_key, partition_for, stage_topics, visitor_key
from tests.unit.stages.stage_fakes import CODEC, COMPANY_IP, FakeReference, Table, event, make_settings, payload, record

ROOT = Path(__file__).resolve().parents[2]


def test_the_map_names_only_modules_and_topics_that_exist() -> None:
    doc = topology.__doc__ or ""
    modules = set(re.findall(r"\(?(pipeline(?:\.\w+)+)\)?", doc))
    assert {"pipeline.collector", "pipeline.sinks", "pipeline.leads"} <= modules
    for name in modules:
        assert importlib.util.find_spec(name) is not None, f"topology.py names {name}, which does not exist"
    catalogue = SchemaCatalogue()
    names = {str(t["name"]) for t in catalogue.topics.values()}
    for topic in re.findall(r"``([a-z]+(?:-[a-z]+)+)``", doc):
        assert topic in names, f"topology.py names topic {topic}, which is not in the catalogue"
    assert names <= set(re.findall(r"[a-z]+(?:-[a-z]+)*", doc)), "every catalogue topic is on the map"
    for stage in STAGES:
        assert {stage.source, *stage.outputs} <= set(catalogue.topics)


def test_the_worker_is_wired_from_the_stage_table() -> None:
    settings = make_settings(topics={"visits": "v-renamed", "partitions": {"visits": 3, "lead_scores": 5}})
    wiring = stage_topics(settings)
    assert list(wiring) == [s.name for s in STAGES]
    visitor, account = build_handlers(settings)
    vt, at = visitor.topics, account.topics
    assert (vt.visits, vt.visits_partitions, vt.bad_events, vt.pixel_events_partitions) == (
        "v-renamed", 3, wiring["visitor"].outputs["bad_events"].name, wiring["visitor"].source.partitions)
    assert (at.lead_scores, at.lead_scores_partitions) == (wiring["account"].outputs["lead_scores"].name, 5)
    assert wiring["account"].source.name == "v-renamed" and account.idle.partitions == 3


def test_stages_write_only_their_outputs_with_the_topology_keys() -> None:
    settings = make_settings()
    wiring = stage_topics(settings)
    visitor, account = build_handlers(settings)
    visitor.reference = FakeReference()  # type: ignore[assignment]
    table = Table()
    result = asyncio.run(visitor(0, 0, record(payload("v1", [event()], ip=COMPANY_IP),
                                              payload("v2", [event(url=None)])), table.view))
    table.apply(0, result)
    names = {spec.name for spec in wiring["visitor"].outputs.values()}
    assert {o.topic for o in result.outputs} == names                        # visits and one bad row
    assert set(result.states) == {visitor_key("acme", "v1")}
    visits = [o for o in result.outputs if o.topic == wiring["visitor"].outputs["visits"].name]
    key = account_key("acme", "c:brightpath-analytics.example")
    assert [(o.partition, o.key) for o in visits] == [(partition_for(key, visitor.topics.visits_partitions),
                                                      key.encode())]
    scored = asyncio.run(account(visits[0].partition or 0, 0, visits[0].value or b"", Table().view))
    assert {o.topic for o in scored.outputs} <= {spec.name for spec in wiring["account"].outputs.values()}
    assert set(scored.states) == {key}
    [score] = [o for o in scored.outputs if o.topic == wiring["account"].outputs["lead_scores"].name]
    assert score.key == key.encode() and score.partition == partition_for(key, account.topics.lead_scores_partitions)
    assert CODEC.decode(score.value or b"")["account"] == "c:brightpath-analytics.example"


def test_collector_and_worker_do_not_import_the_local_stack_or_the_load_tools() -> None:
    code = ("import json, sys\n"
            "import pipeline.cli, pipeline.collector.server, pipeline.stages.main, pipeline.stages.worker\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('pipeline.local', 'loadtest')))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_account_keys_round_trip() -> None:
    from pipeline.topology import site_of_key, split_account_key
    key = account_key("acme", "c:brightpath-analytics.example")
    assert split_account_key(key) == ("acme", "c:brightpath-analytics.example") and site_of_key(key) == "acme"
    assert site_of_key(visitor_key("acme", "v1")) == "acme" and split_account_key("no-separator") is None

