"""Reading and validating import files, without Redis (pipeline.ops.importer)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.core.model import Sector
from pipeline.ops.importer import (DEMO_FILES, KINDS, AsnTypeRow, CompanyRow, ImportFileError, IpRangeRow,
                                   detect_format, import_file, read_rows)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_formats_by_extension_and_by_content(tmp_path: Path) -> None:
    assert detect_format(_write(tmp_path, "a.csv", '{"not": "used"}')) == "csv"
    assert detect_format(_write(tmp_path, "a.jsonl", "domain\n")) == "jsonl"
    assert detect_format(_write(tmp_path, "a.ndjson", "")) == "jsonl"
    assert detect_format(_write(tmp_path, "export.txt", '\n  {"domain": "a.example"}\n')) == "jsonl"
    assert detect_format(_write(tmp_path, "export.dat", "domain,name\n")) == "csv"
    gz = tmp_path / "ranges.csv.gz"
    gz.write_bytes(gzip.compress(b"cidr,domain\n"))
    assert detect_format(gz) == "csv"
    sniffed = tmp_path / "blob"
    sniffed.write_bytes(gzip.compress(b'{"asn": 1, "type": "isp"}\n'))
    assert detect_format(sniffed) == "jsonl"


def test_csv_rows_carry_their_line_numbers_and_reasons(tmp_path: Path) -> None:
    path = _write(tmp_path, "companies.csv", "\n".join([
        "domain,name,employees,country,sector,tags",                # line 1
        "acme.example,Acme,120,us,private,saas;b2b",                 # 2 ok
        "not a domain,Nope,,,,",                                     # 3 bad domain
        "",                                                          # 4 blank: ignored
        'multi.example,"Multi',                                      # 5..6 quoted newline: ok
        'Line Corp",5,DE,,',
        "emp.example,Emp,-4,,,",                                     # 7 negative employees
        "cty.example,Cty,,USA,,",                                    # 8 bad country
        "sec.example,Sec,,,spaceship,",                              # 9 bad sector
        "far.example,Far,1,US,private,a,extra",                      # 10 too many values
        "ok.example,Ok,,,non-profit,",                               # 11 ok (synonym)
    ]) + "\n")
    rows = list(read_rows("companies", path))
    good = {line: row for line, row in rows if not isinstance(row, str)}
    bad = {line: row for line, row in rows if isinstance(row, str)}
    assert sorted(good) == [2, 5, 11]
    assert sorted(bad) == [3, 7, 8, 9, 10]
    assert "domain" in bad[3] and "not a domain" in bad[3]
    assert bad[7].startswith("employees:")
    assert "ISO 3166" in bad[8]
    assert bad[9].startswith("sector:")
    assert "7 values for 6 columns" in bad[10]
    acme = good[2]
    assert isinstance(acme, CompanyRow)
    assert (acme.country, acme.tags, acme.employees) == ("US", ["saas", "b2b"], 120)
    assert isinstance(good[5], CompanyRow) and good[5].name == "Multi\nLine Corp"
    assert isinstance(good[11], CompanyRow) and good[11].sector is Sector.non_profit


def test_csv_header_problems_fail_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="missing column.*name"):
        list(read_rows("companies", _write(tmp_path, "d.csv", "domain,industry\n")))
    with pytest.raises(ImportFileError, match="more than one column for domain"):
        list(read_rows("companies", _write(tmp_path, "e.csv", "domain,name,Domain\n")))


def test_unknown_csv_columns_are_ignored_with_a_warning_naming_them(tmp_path: Path) -> None:
    warnings: list[str] = []
    path = _write(tmp_path, "c.csv", "domain,name,employes,Owner Email\nacme.example,Acme,5,x@y.example\n")
    [(line, row)] = list(read_rows("companies", path, warnings=warnings))
    assert line == 2 and isinstance(row, CompanyRow) and row.employees is None
    [warning] = warnings
    assert "employes (did you mean employees?)" in warning and "Owner Email" in warning


def test_csv_header_is_case_and_bom_tolerant(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffDomain, Name ,Employee Range\nacme.example,Acme,51-200\n".encode())
    [(line, row)] = list(read_rows("companies", path))
    assert line == 2 and isinstance(row, CompanyRow)
    assert row.to_record().company.employees == 51          # lower bound of the range


def test_invalid_utf8_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"domain,name\nacme.example,Acme\nbad.example,Caf\xe9\n")
    rows = list(read_rows("companies", path))
    assert rows[0][0] == 2 and not isinstance(rows[0][1], str)
    assert rows[1] == (3, "not valid UTF-8")


def test_jsonl_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "asn.jsonl", "\n".join([
        '{"asn": "AS64496", "type": "ISP", "org": "Example Broadband"}',
        "",
        "{not json",
        "[1, 2]",
        '{"asn": 64497, "type": "telco"}',
        '{"asn": 64498, "type": "hosting", "colour": "red"}',
        '{"asn": 0, "type": "hosting"}',
        '{"asn": 64499, "type": "business", "org": null}',
    ]) + "\n")
    rows = dict(read_rows("asn-types", path))
    assert rows[1] == AsnTypeRow(asn=64496, type="isp", org="Example Broadband")
    assert str(rows[3]).startswith("not valid JSON")
    assert rows[4] == "a line must hold one JSON object"
    assert str(rows[5]).startswith("type:")
    assert rows[6] == AsnTypeRow(asn=64498, type="hosting")   # the unknown key is ignored
    assert str(rows[7]).startswith("asn:")
    assert rows[8] == AsnTypeRow(asn=64499, type="business")


def test_ip_range_rows() -> None:
    row = IpRangeRow(cidr="203.0.113.0/28", domain="https://www.acme.example/")
    assert row.domain == "acme.example" and [str(n) for n in row.networks] == ["203.0.113.0/28"]
    v6 = IpRangeRow(cidr="2001:DB8:100::/48", domain="acme.example")
    assert [str(n) for n in v6.networks] == ["2001:db8:100::/48"]
    span = IpRangeRow(start_ip="203.0.113.10", end_ip="203.0.113.20", domain="acme.example")
    assert [str(n) for n in span.networks] == ["203.0.113.10/31", "203.0.113.12/30", "203.0.113.16/30",
                                               "203.0.113.20/32"]
    single = IpRangeRow(start_ip="192.0.2.7", end_ip="192.0.2.7", domain="acme.example")
    assert [str(n) for n in single.networks] == ["192.0.2.7/32"]

    def reason(**kwargs: str) -> str:
        with pytest.raises(ValidationError) as exc:
            IpRangeRow(**kwargs)
        return str(exc.value)

    assert "did you mean 203.0.113.0/24" in reason(cidr="203.0.113.5/24", domain="a.example")
    assert "not a network" in reason(cidr="203.0.113.0/33", domain="a.example")
    assert "broader than /8" in reason(cidr="0.0.0.0/0", domain="a.example")
    assert "broader than /16" in reason(cidr="2000::/8", domain="a.example")
    assert "after end_ip" in reason(start_ip="192.0.2.9", end_ip="192.0.2.1", domain="a.example")
    assert "different IP versions" in reason(start_ip="192.0.2.1", end_ip="2001:db8::1", domain="a.example")
    assert "either cidr or" in reason(cidr="192.0.2.0/24", start_ip="192.0.2.1", domain="a.example")
    assert "give cidr" in reason(start_ip="192.0.2.1", domain="a.example")


def test_company_rows() -> None:
    row = CompanyRow.model_validate({"domain": "WWW.Acme.Example", "name": "Acme", "sector": "Public Sector",
                                     "aliases": "ACME-AS; Acme Holdings", "domains": "acme.example.net;mail.acme.example",
                                     "employee_range": "10001+", "revenue": "1.5e9"})
    record = row.to_record()
    assert record.company.domain == "acme.example"
    assert record.company.sector is Sector.public_sector
    assert record.company.employees == 10001 and record.company.revenue == 1.5e9
    assert record.org_names == ("ACME-AS", "Acme Holdings")
    assert record.alias_domains == ("acme.example.net", "mail.acme.example")
    with pytest.raises(ValidationError, match="employee_range"):
        CompanyRow(domain="a.example", name="A", employee_range="500-50")
    with pytest.raises(ValidationError, match="name"):
        CompanyRow(domain="a.example", name="  ")


def test_demo_data_is_valid_in_every_format() -> None:
    assert set(DEMO_FILES) <= set(KINDS)
    for kind, path in DEMO_FILES.items():
        rows = list(read_rows(kind, path))
        errors = [(line, r) for line, r in rows if isinstance(r, str)]
        assert not errors, (kind, errors)
        assert len(rows) >= 10, kind
    companies = [r for _, r in read_rows("companies", DEMO_FILES["companies"]) if isinstance(r, CompanyRow)]
    sectors = {c.sector for c in companies}
    assert {Sector.government, Sector.education, Sector.non_profit, Sector.private} <= sectors
    assert all(c.domain.endswith(".example") for c in companies)
    people = Path(DEMO_FILES["companies"]).with_name("people.jsonl").read_text().splitlines()
    assert len(people) == 10 and all(json.loads(p)["email"].endswith(".example") for p in people)


def test_validate_only_import_counts_without_a_store(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "r.csv", "cidr,domain\n192.0.2.0/24,a.example\n192.0.2.1/24,b.example\n")
    report = import_file("ip-ranges", path, None, progress=True)
    assert (report.imported, report.skipped, report.format) == (1, 1, "csv")
    assert report.errors == [(3, "cidr '192.0.2.1/24' has host bits set; did you mean 192.0.2.0/24?")]
    assert not report.ok
    assert capfd.readouterr().err == ""          # no progress bar when stderr is not a terminal


def test_unknown_kind_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown import kind 'people'"):
        import_file("people", tmp_path / "x.csv", None)
    with pytest.raises(FileNotFoundError):
        import_file("companies", tmp_path / "missing.csv", None)


def test_customer_column_becomes_the_customer_tag(tmp_path: Path) -> None:
    f = tmp_path / "crm.csv"
    f.write_text("domain,name,tags,customer\nold.example,Old Client,saas,yes\nnew.example,Prospect,,\n"
                 "both.example,Both,Customer,true\n")
    rows = {r.domain: r.to_record().company.tags for _, r in read_rows("companies", f)  # type: ignore[union-attr]
            if isinstance(r, CompanyRow)}
    assert rows == {"old.example": ("saas", "customer"), "new.example": (), "both.example": ("Customer",)}
    bad = [r for _, r in read_rows("companies", _write(tmp_path, "b.csv", "domain,name,customer\na.example,A,maybe\n"))]
    assert isinstance(bad[0], str) and "customer" in bad[0]
