"""Helpers for running stage workers as real processes and reading topics back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kafka import KafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One worker process running ``module`` with a JSON config file."""

    def __init__(self, module: str, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.module = module
        self.config_path = workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, str(self.config_path)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dump_stacks(self) -> None:
        """Ask a live worker to write every task's stack to its log (mode's SIGUSR1 handler)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR1)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def read_all(bootstrap: str, topic: str, timeout_s: float = 5.0) -> list[Any]:
    """Every record currently in ``topic`` (all partitions, up to the end offsets at call time)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s + 0.001 * sum(end.values())
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               on_timeout: Callable[[], str] | None = None, every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{extra}")
        time.sleep(every_s)
