"""deploy/leadstream.example.yaml, the settings docker compose mounts: its demo site accepts hits."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.settings import load_settings

from .conftest import MakeClient

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "leadstream.example.yaml"


async def test_the_example_site_accepts_hits(make_client: MakeClient) -> None:
    """Before: every hit was 403 (no site configured). The mounted example's demo site accepts a pixel
    (no Origin) and a browser call from a page on this host."""
    settings = load_settings(EXAMPLE)
    http, sink = await make_client(settings)
    r = await http.get("/p.gif", params={"site_id": "demo", "visitor_id": "v-1", "type": "page_view",
                                         "url": "http://localhost/pricing"})
    assert r.status_code == 200
    body = json.dumps({"site_id": "demo", "visitor_id": "v-2", "events": [
        {"type": "page_view", "id": "e-1", "url": "http://localhost:8000/demo"}]})
    r = await http.post("/collect", content=body, headers={"origin": "http://localhost:8000",
                                                           "content-type": "text/plain"})
    assert r.status_code == 200, r.text
    r = await http.post("/collect", content=body, headers={"origin": "https://evil.example",
                                                           "content-type": "text/plain"})
    assert r.status_code == 403
    assert [p[0]["site_id"] for p in sink.payloads] == ["demo", "demo"]
