"""A minimal stage on the real runtime, run as a worker process by the crash tests.

Input records carry JSON ``[[key, amount], ...]`` whose keys all map to the
record's partition. State per key: the sum and count of amounts. Output: one
record per (input record, key) with a deterministic id, so the tests can
count every input through to the output and the final table state.

Usage: python -m tests.integration.apps.counting CONFIG.json
CONFIG: bootstrap, app_id, source, sink, partitions, data_dir, gap_repair,
        skip_first_per_partition (inject Faust's measured fault: ack the first
        record of each partition after start without handing it to the stage),
        stall_after_s (the stall watchdog; 0 disables), stall_partition_after
        (inject the stall seen after a join/leave: once partition 0 has handled
        that many records, every later record of it is dropped the first time
        it is delivered, as Faust dropped fetched records, so that nothing but
        a seek back brings them; with stall_forever, every time),
        stall_recovery (inject the recovery stall seen after a join/leave:
        every record of changelog partition 0 that Faust's consumer fetches
        while the table recovers is dropped, as Faust dropped fetched records
        when the generation changed, until something seeks that partition),
        commit_records / commit_ms (group commit), crash_after_ack (once the
        outputs of that many groups were acknowledged, exit with code 9 right
        after the next group's acknowledgement, before its state is written;
        only when the marker file crash_marker does not exist yet, created then).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.settings import KafkaSettings, Settings, StageSettings
from pipeline.stages.app import add_stage, build_app
from pipeline.stages.runtime import HandlerResult, Output, StateView
from pipeline.stages.worker import run_worker


def make_app(cfg: dict[str, Any]) -> Any:
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=cfg["bootstrap"]), data_dir=cfg["data_dir"],
                        stages=StageSettings(app_id=cfg["app_id"], gap_repair=cfg.get("gap_repair", True),
                                             commit_interval_s=cfg.get("commit_interval_s", 1.0),
                                             session_timeout_s=cfg.get("session_timeout_s", 10.0),
                                             heartbeat_interval_s=1.0,
                                             stall_after_s=cfg.get("stall_after_s", 30.0),
                                             commit_records=cfg.get("commit_records", 1),
                                             commit_ms=cfg.get("commit_ms", 50.0)))
    app = build_app(settings, cfg["partitions"])
    sink = cfg["sink"]

    async def handler(partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        result = HandlerResult()
        for key, amount in json.loads(value):
            if states.applied(key, offset):
                continue
            state = result.states.get(key) or states.get(key) or {"sum": 0, "count": 0}
            state = {"sum": state["sum"] + amount, "count": state["count"] + 1}
            result.states[key] = state
            out = {"id": f"{partition}:{offset}:{key}", "key": key, "sum": state["sum"], "count": state["count"]}
            result.outputs.append(Output(sink, partition, key.encode(), json.dumps(out).encode()))
        return result

    stage = add_stage(app, settings, "counting", cfg["source"], cfg["partitions"], handler)

    @app.on_partitions_assigned.connect
    async def _log_assignment(_app: Any, assigned: Any = (), /, *_args: Any, **_kw: Any) -> None:
        # the tests wait for this line to know the worker joined and holds partitions
        mine = sorted(tp.partition for tp in assigned if tp.topic == cfg["source"])
        if mine:
            logging.getLogger("counting").warning("assigned partitions %s", mine)
    runner = stage.runner
    Records = Sequence[tuple[int, int, bytes]]
    if cfg.get("skip_first_per_partition"):
        seen: set[int] = set()
        original = runner.handle_group

        async def faulty(records: Records) -> None:
            kept = []
            for partition, offset, value in records:
                if partition not in seen:
                    seen.add(partition)
                    continue  # acked by Faust, never applied: what 0.15.3 did after a graceful restart
                kept.append((partition, offset, value))
            await original(kept)

        runner.handle_group = faulty  # type: ignore[method-assign]
    if cfg.get("stall_partition_after"):
        handled = 0
        dropped: set[int] = set()
        inner = runner.handle_group

        async def stalling(records: Records) -> None:
            nonlocal handled
            kept = []
            for partition, offset, value in records:
                if (partition == 0 and handled >= cfg["stall_partition_after"]
                        and (offset not in dropped or cfg.get("stall_forever"))):
                    # fetched, never handed to the stage: what Faust did to records in flight around a rebalance
                    if not dropped:
                        logging.getLogger("counting").warning("injected: partition 0 records dropped from %d",
                                                              offset)
                    dropped.add(offset)
                    continue
                kept.append((partition, offset, value))
                if partition == 0:
                    handled += 1
            await inner(kept)

        runner.handle_group = stalling  # type: ignore[method-assign]
    if cfg.get("stall_recovery"):
        _inject_recovery_stall(app, f"{cfg['app_id']}-counting-state-changelog")
    if cfg.get("crash_after_ack") is not None and not Path(cfg["crash_marker"]).exists():
        acked = 0
        send = runner.send

        async def crashing(outputs: Any) -> None:
            nonlocal acked
            await send(outputs)
            acked += 1
            if acked > cfg["crash_after_ack"]:
                # outputs acknowledged, state not written: the window group commit must survive
                Path(cfg["crash_marker"]).write_text(str(len(outputs)))
                logging.getLogger("counting").warning("injected: exit after %d outputs acknowledged", len(outputs))
                logging.shutdown()
                os._exit(9)

        runner.send = crashing
    return app


def _inject_recovery_stall(app: Any, changelog: str) -> None:
    from faust.transport.consumer import Consumer

    getmany, seek = Consumer.getmany, Consumer.seek
    state = {"dropped": 0, "sought": False}

    async def dropping(self: Any, timeout: float) -> Any:
        async for tp, message in getmany(self, timeout):
            if (tp.topic == changelog and tp.partition == 0 and not state["sought"]
                    and self.app.tables.recovery.in_recovery):
                if not state["dropped"]:
                    logging.getLogger("counting").warning("injected: recovery records of %s[0] dropped from %d",
                                                          changelog, message.offset)
                state["dropped"] += 1
                continue
            yield tp, message

    async def seeking(self: Any, partition: Any, offset: int) -> None:
        if partition.topic == changelog and partition.partition == 0:
            state["sought"] = True
        await seek(self, partition, offset)

    Consumer.getmany = dropping  # type: ignore[method-assign]
    Consumer.seek = seeking  # type: ignore[method-assign]


if __name__ == "__main__":
    config = json.loads(open(sys.argv[1]).read())
    run_worker(make_app(config), loglevel=config.get("loglevel", "warn"))
