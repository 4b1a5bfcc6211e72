"""import_file against a real Redis: upserts, idempotence, bad rows, chunking, progress."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.enrich.redis_store import ReferenceStore
from pipeline.ops.importer import DEMO_FILES, import_demo_data, import_file


def snapshot(store: ReferenceStore) -> dict[str, Any]:
    """Every key and its value (imports bookkeeping left out: it holds a timestamp; so is the
    generation counter that tells the workers' caches a write happened)."""
    out: dict[str, Any] = {}
    for key in store.scan_iter("*"):
        if key.endswith(":imports") or key == store.keys_.generation():
            continue
        kind = store.type(key)
        if kind == "hash":
            out[key] = store.hgetall(key)
        elif kind == "set":
            out[key] = sorted(store.smembers(key))
        else:
            out[key] = (kind, store.dump(key))
    return out


def test_demo_data_imports_cleanly_and_reimport_changes_nothing(store: ReferenceStore) -> None:
    reports = import_demo_data(store)
    assert [(r.kind, r.imported, r.skipped, r.errors) for r in reports] == [
        ("companies", 12, 0, []), ("ip-ranges", 12, 0, []), ("asn-types", 10, 0, [])]
    first = snapshot(store)
    assert "ls:global:company:open-water.example" in first
    again = import_demo_data(store)
    assert all(r.ok for r in again)
    assert snapshot(store) == first
    assert store.last_imports()["companies"]["imported"] == 12
    batch = store.resolve_batch(["203.0.113.5", "2001:db8:300::1"], org_names=["Open Water Fdn"],
                                domains=["stateu.example"], asns=[64503])
    assert batch.company_for_ip("203.0.113.5").name == "Brightpath Analytics Inc."  # type: ignore[union-attr]
    assert batch.ranges["2001:db8:300::1"].domain == "state-university.example"
    assert batch.company_for_org("Open Water Fdn").sector.value == "non_profit"  # type: ignore[union-attr]
    assert batch.company_for_domain("stateu.example").domain == "state-university.example"  # type: ignore[union-attr]
    assert batch.asns[64503].type == "government"


def test_bad_rows_are_reported_by_line_and_the_rest_imported(store: ReferenceStore, tmp_path: Path) -> None:
    path = tmp_path / "ranges.csv"
    path.write_text("\n".join([
        "cidr,start_ip,end_ip,domain",
        "203.0.113.0/28,,,acme.example",
        "203.0.113.5/28,,,acme.example",
        "not-an-ip,,,acme.example",
        ",192.0.2.10,192.0.2.20,span.example",
        "2001:db8:100::/48,,,",
        "2001:db8:200::/48,,,v6.example",
        ",198.51.100.9,198.51.100.1,backwards.example",
    ]) + "\n")
    report = import_file("ip-ranges", path, store, progress=False)
    assert (report.imported, report.skipped) == (3, 4)
    assert [line for line, _ in report.errors] == [3, 4, 6, 8]
    assert "did you mean 203.0.113.0/28" in report.errors[0][1]
    assert report.errors[2][1].startswith("domain:")
    result = store.lookup_batch(["203.0.113.15", "192.0.2.9", "192.0.2.10", "192.0.2.20", "192.0.2.21",
                                 "2001:db8:200::5", "198.51.100.5"])
    assert {ip: m.domain for ip, m in result.ranges.items()} == {
        "203.0.113.15": "acme.example", "192.0.2.10": "span.example", "192.0.2.20": "span.example",
        "2001:db8:200::5": "v6.example"}


def test_a_bad_header_imports_nothing(store: ReferenceStore, tmp_path: Path) -> None:
    path = tmp_path / "companies.csv"
    path.write_text("domain,company_name,employees\nacme.example,Acme,5\n")
    report = import_file("companies", path, store, progress=False)
    assert report.imported == 0 and report.errors[0][0] == 1 and "missing column(s) name" in report.errors[0][1]
    assert not store.exists("ls:global:company:acme.example")


def test_a_crm_export_with_extra_columns_imports_with_a_warning(store: ReferenceStore, tmp_path: Path) -> None:
    path = tmp_path / "crm.csv.gz"
    path.write_bytes(gzip.compress("\ufeffRecord ID,Name,Owner,Domain,Notes\r\n"
                                   '7,Acme,jane,acme.example,"two\nlines"\r\n'.encode()))
    report = import_file("companies", path, store, progress=False)
    assert report.imported == 1 and report.ok and not report.check
    assert report.warnings and all(c in report.warnings[0] for c in ("Record ID", "Owner", "Notes"))
    assert store.exists("ls:global:company:acme.example")


def test_rows_are_written_in_pipelined_chunks(store: ReferenceStore, tmp_path: Path) -> None:
    path = tmp_path / "asn.jsonl.gz"
    lines = [json.dumps({"asn": 64496 + i, "type": "isp", "org": f"Net {i}"}) for i in range(10)]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    before = store.round_trips
    report = import_file("asn-types", path, store, progress=False, chunk_rows=3)
    assert (report.imported, report.format) == (10, "jsonl")
    assert store.round_trips - before == 4                  # ceil(10 / 3) pipelines
    assert store.lookup_batch(asns=[64505]).asns[64505].org == "Net 9"


def test_reimport_with_changes_upserts(store: ReferenceStore, tmp_path: Path) -> None:
    path = tmp_path / "companies.jsonl"
    path.write_text(json.dumps({"domain": "acme.example", "name": "Acme", "industry": "Software",
                                "aliases": ["Acme Old"]}) + "\n")
    import_file("companies", path, store, progress=False)
    path.write_text(json.dumps({"domain": "acme.example", "name": "Acme", "employees": 40,
                                "aliases": ["Acme New"]}) + "\n")
    import_file("companies", path, store, progress=False)
    data = store.hgetall("ls:global:company:acme.example")
    assert data["employees"] == "40" and "industry" not in data
    assert store.lookup_batch(org_names=["Acme Old", "Acme New"]).orgs == {"Acme New": "acme.example"}


def test_site_import_lands_in_the_site_scope(store: ReferenceStore) -> None:
    import_file("companies", DEMO_FILES["companies"], store, site="shop", progress=False)
    assert store.exists("ls:site:shop:company:ironvale.example")
    assert not store.exists("ls:global:company:ironvale.example")
    assert "companies" in store.last_imports(site="shop")


def test_no_progress_output_when_stderr_is_not_a_terminal(store: ReferenceStore,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    import_file("companies", DEMO_FILES["companies"], store, progress=True)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_large_file_imports_quickly(store: ReferenceStore, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = [f"10.{i // 256}.{i % 256}.0/24,,,c{i % 500}.example" for i in range(20_000)]
    path.write_text("cidr,start_ip,end_ip,domain\n" + "\n".join(rows) + "\n")
    report = import_file("ip-ranges", path, store, progress=False)
    assert report.imported == 20_000 and report.duration_s < 10
    assert store.lookup_batch(["10.78.31.200"]).ranges["10.78.31.200"].domain == f"c{(78 * 256 + 31) % 500}.example"
