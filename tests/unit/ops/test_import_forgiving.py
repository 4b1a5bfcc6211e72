"""Imports forgive what real CRM exports look like: extra columns, other column orders, a BOM,
quoted newlines, gzip; ``--map column=field`` and ``--check`` (pipeline.ops.importer, the CLI)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ops.importer import CompanyRow, ImportFileError, import_file, parse_column_map, read_rows

REPO = Path(__file__).resolve().parents[3]

# What a HubSpot-style companies export looks like: its own names, many columns we have no use for,
# a multi-line description, a BOM, Windows line ends.
HUBSPOT = ("\ufeff" + "\r\n".join([
    '"Record ID","Company name","Create Date","Company Domain Name","Description","Number of Employees",'
    '"Industry","Country/Region","Company owner"',
    '"1001","Acme Analytics","2024-01-02 10:00","acme.example","Analytics for teams.\nFounded 2009,'
    ' Berlin.","250","software","DE","Jane Seller"',
    '"1002","Beta Logistics","2024-02-03 11:00","https://www.beta.example/","","5000","logistics","US",""',
    '"1003","Broken Co","2024-02-03 11:00","not a domain","","12","retail","US",""',
]) + "\r\n")
HUBSPOT_MAP = ["Company name=name", "Company Domain Name=domain", "Number of Employees=employees",
               "Country/Region=country"]


def _csv(tmp_path: Path, name: str, text: str, gz: bool = False) -> Path:
    path = tmp_path / name
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_a_crm_export_imports_with_a_map_and_warns_about_the_columns_it_ignores(tmp_path: Path, gz: bool) -> None:
    path = _csv(tmp_path, "hubspot-companies.csv" + (".gz" if gz else ""), HUBSPOT, gz)
    warnings: list[str] = []
    rows = dict(read_rows("companies", path, column_map=parse_column_map(HUBSPOT_MAP), warnings=warnings))
    acme, beta = rows[2], rows[4]
    assert isinstance(acme, CompanyRow) and isinstance(beta, CompanyRow)
    assert (acme.domain, acme.name, acme.employees, acme.industry, acme.country) == (
        "acme.example", "Acme Analytics", 250, "software", "DE")
    assert beta.domain == "beta.example" and beta.employees == 5000
    assert isinstance(rows[5], str) and "not a domain" in rows[5]   # the quoted newline kept line numbers right
    [warning] = warnings
    for column in ("Record ID", "Create Date", "Description", "Company owner"):
        assert column in warning
    assert "Industry" not in warning


def test_column_order_does_not_matter(tmp_path: Path) -> None:
    a = _csv(tmp_path, "a.csv", "domain,name,employees\nacme.example,Acme,10\n")
    b = _csv(tmp_path, "b.csv", "Employees,Notes,Name,Domain\n10,call back,Acme,acme.example\n")
    [(_, row_a)] = list(read_rows("companies", a))
    [(_, row_b)] = list(read_rows("companies", b))
    assert row_a == row_b


def test_without_the_map_the_required_columns_are_missing_and_the_message_says_how_to_map(tmp_path: Path) -> None:
    path = _csv(tmp_path, "hubspot.csv", HUBSPOT)
    with pytest.raises(ImportFileError, match="missing column.*domain.*--map"):
        list(read_rows("companies", path))


def test_a_map_to_an_unknown_field_fails_the_file(tmp_path: Path) -> None:
    path = _csv(tmp_path, "c.csv", "domain,name,Headcount\nacme.example,Acme,5\n")
    with pytest.raises(ImportFileError, match="unknown field.*headcont"):
        list(read_rows("companies", path, column_map={"headcount": "headcont"}))


def test_parse_column_map() -> None:
    assert parse_column_map(["Company Domain Name = domain", "Employees=employees"]) == {
        "company_domain_name": "domain", "employees": "employees"}
    for bad in ("domain", "=domain", "x="):
        with pytest.raises(ValueError, match="column=field"):
            parse_column_map([bad])


def test_jsonl_extra_keys_are_ignored_and_keys_can_be_mapped(tmp_path: Path) -> None:
    lines = [{"hs_object_id": 1, "companyName": "Acme", "domain": "acme.example", "lifecycle": "lead"},
             {"hs_object_id": 2, "companyName": "Beta", "domain": "beta.example"}]
    path = _csv(tmp_path, "c.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    warnings: list[str] = []
    rows = list(read_rows("companies", path, column_map={"companyname": "name"}, warnings=warnings))
    assert [r.name for _, r in rows if isinstance(r, CompanyRow)] == ["Acme", "Beta"]
    [warning] = warnings
    assert "hs_object_id" in warning and "lifecycle" in warning and "companyName" not in warning


def test_check_says_would_import_and_writes_nothing(tmp_path: Path) -> None:
    path = _csv(tmp_path, "c.csv", "domain,name,Owner\nacme.example,Acme,x\nbeta.example,Beta,y\n")
    report = import_file("companies", path, None, progress=False)
    assert report.check and report.imported == 2 and report.ok
    assert report.summary().startswith("companies: would import 2, 0 skipped")
    assert "nothing written" in report.summary()
    assert report.warnings and "Owner" in report.warnings[0]


def test_the_cli_maps_checks_and_warns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "hubspot.csv.gz", HUBSPOT, gz=True)
    config = tmp_path / "leadstream.yaml"
    config.write_text("sites: [{site_id: acme}]\n")
    args = [sys.executable, "-m", "pipeline.cli", "import", "companies", str(path), "--check", "--no-progress",
            "-c", str(config)]
    for item in HUBSPOT_MAP:
        args += ["--map", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LEADSTREAM_REDIS__URL", None)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "companies: would import 2, 1 skipped" in done.stdout, done.stdout + done.stderr
    assert "warning: ignored unknown column(s): Record ID" in done.stderr
    assert "line 5:" in done.stderr
    assert done.returncode == 1                                  # a bad row: not ok, as before
    bad_map = subprocess.run(args[:-2] + ["--map", "nonsense"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)
    assert bad_map.returncode == 2 and "column=field" in bad_map.stderr
