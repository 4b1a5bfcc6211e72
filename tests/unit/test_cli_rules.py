"""`leadstream config --site S` and `leadstream icp --site S`: a site's effective, merged rules."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.scoring_model import default_scoring_model

SETTINGS = """
sites:
  - site_id: acme
    allowed_origins: ["https://www.acme.example"]
    conversion_names: [demo_request]
    rules:
      icp:
        rules:
          - {name: target_industry, attribute: industry, values: [software, fintech], weight: 40}
          - {name: company_size, attribute: employees, min: 50, max: 1000, weight: 30}
          - {name: target_country, attribute: country, values: [DE, FR, NL], weight: 20, required: false}
      filters: {countries_deny: [kp]}
      intent:
        page_signals: [{name: pricing, patterns: ["/preise*"], points: 12}]
"""


def _run(tmp_path: Path, *args: str) -> tuple[int, str]:
    cfg = tmp_path / "leadstream.yaml"
    cfg.write_text(SETTINGS)
    result = CliRunner().invoke(app, [*args, "-c", str(cfg)])
    return result.exit_code, result.output


def test_config_site_prints_the_merged_rules(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "config", "--site", "acme")
    assert code == 0, out
    rules = json.loads(out)
    model = default_scoring_model()
    assert rules["site_id"] == "acme" and rules["model_version"] == model.version
    assert rules["filters"]["countries_deny"] == ["KP"]
    assert rules["filters"]["pages_exclude"] == list(model.filters.pages_exclude)      # kept from the model
    pricing = next(s for s in rules["intent"]["page_signals"] if s["name"] == "pricing")
    assert pricing["patterns"] == ["/preise*"] and pricing["points"] == 12
    assert any(s["name"] == "demo" for s in rules["intent"]["page_signals"])
    assert rules["intent"]["conversions"][0] == {"name": "conversion_names", "forms": [], "events": ["demo_request"],
                                                 "pages": []}
    assert rules["thresholds"]["fit_min"] == model.thresholds.fit_min


def test_icp_in_plain_words(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "icp", "--site", "acme")
    assert code == 0, out
    assert out.strip() == ("Companies in software or fintech, 50-1000 employees, in DE, FR, NL; "
                           "required: industry, employees")


def test_unknown_site(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "icp", "--site", "nope")
    assert code == 2 and "unknown site 'nope'" in out
