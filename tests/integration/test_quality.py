"""Lead quality on a labelled world (#12): the benchmark's own function on a fixed seed, through the
real collector and worker on the real broker and Redis. Event time comes from the world, so the
run is deterministic up to the collector's clock (dtm/stm history). The issue's targets apply
(``ENFORCE_ISSUE_TARGETS``), and below them a floor with a margin that names how far it fell."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from loadtest.bench_quality import (TARGET_F1_OVER_NAIVE, TARGET_PRECISION, TARGET_RECALL, format_report,
                                    run_world, world_t0)
from loadtest.world import build_world
from pipeline.local.kafka import KafkaBroker
from pipeline.local.redis import RedisServer

SEED = 1
SERVER_SIDE_SHARE = 0.25

#: The floor, with a margin below what this seed and share measure with the model fixes of #12
#: (precision 0.95, recall 1.0, F1 0.974; naive rule 0.474 / 0.947 / 0.632; before the fixes the
#: product measured 0.452 / 1.0 / 0.623): one more false positive than today still passes, two fail.
TODAY_MIN_PRECISION = 0.90
TODAY_MIN_RECALL = 0.90
TODAY_MIN_F1 = 0.90
TODAY_MIN_F1_OVER_NAIVE = 0.10

#: The issue's targets: precision >= 0.95, recall >= 0.90, F1 >= naive + 0.1. This seed meets them
#: (README "Lead quality benchmark" has the five seeds), at the edge for precision: its one false
#: positive is a lead issued before a bot's page rate unmasked it, so one more fails the test.
ENFORCE_ISSUE_TARGETS = True


def test_lead_quality_on_a_labelled_world(kafka_broker: KafkaBroker, redis_server: RedisServer,
                                          redis_client: redis.Redis, tmp_path: Path) -> None:
    redis_url = redis_server.url    # redis_client emptied its database
    world = build_world(SEED, world_t0())
    report = run_world(world, bootstrap=kafka_broker.bootstrap, redis_url=redis_url, work=tmp_path,
                       server_side_share=SERVER_SIDE_SHARE)
    summary = format_report(report) + "\n" + json.dumps(report["world"])
    product, naive = report["product"], report["naive"]
    assert report["bad_rows"] == 0, summary
    assert naive["tp"] > 0 and len(report["truth"]) >= 8, summary
    assert product["precision"] >= TODAY_MIN_PRECISION, summary
    assert product["recall"] >= TODAY_MIN_RECALL, summary
    assert product["f1"] >= TODAY_MIN_F1, summary
    assert product["f1"] >= naive["f1"] + TODAY_MIN_F1_OVER_NAIVE, summary
    if ENFORCE_ISSUE_TARGETS:
        assert product["precision"] >= TARGET_PRECISION, summary
        assert product["recall"] >= TARGET_RECALL, summary
        assert product["f1"] >= naive["f1"] + TARGET_F1_OVER_NAIVE, summary
