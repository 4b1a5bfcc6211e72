"""Identity store without Redis: key layout, plans driven by canned replies, row models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.core.identity import CreatePerson, IdentityOp, IdType, Link, LogEntry, SetProfile, hash_email
from pipeline.enrich.identity_store import (
    IdentityKeys,
    RoundTrip,
    _plan_apply,
    _plan_load,
    _Settings,
    member,
    ops_digest,
    parse_member,
)
from pipeline.ops.identity_import import IdentityRow, PersonRow


def drive(plan: Any, replies: list[list[Any]]) -> tuple[list[RoundTrip], Any]:
    trips: list[RoundTrip] = []
    try:
        trips.append(next(plan))
        for reply in replies:
            trips.append(plan.send(reply))
    except StopIteration as stop:
        return trips, stop.value
    raise AssertionError("plan wanted more round trips")


def test_keys_share_the_site_hash_tag() -> None:
    k = IdentityKeys("s1")
    assert k.link((IdType.visitor, "a:b")) == "ls:{s1}:id:visitor:a:b"
    assert k.person("p") == "ls:{s1}:person:p" and k.person_ids("p") == "ls:{s1}:person:p:ids"
    assert k.log == "ls:{s1}:identity-log"
    assert parse_member(member((IdType.email_click, "x:y"))) == (IdType.email_click, "x:y")
    assert parse_member("fax:1") is None


def test_load_plan_is_two_round_trips_and_asks_for_click_email_hash() -> None:
    ids = [(IdType.visitor, "v1"), (IdType.email_click, "c1"), (IdType.visitor, "v1")]
    trips, snap = drive(_plan_load(IdentityKeys("s1"), ids),
                        [[[b"p1", b"identify"], [None, None], [None, None]],
                         [{b"created": b"5", b"merges": b"2", b"f:title": b"CTO"}, {b"visitor:v1", b"user_id:u"}]])
    assert len(trips) == 2
    assert [c[1] for c in trips[0].commands] == ["ls:{s1}:id:visitor:v1", "ls:{s1}:id:email_click:c1",
                                                 "ls:{s1}:id:email:c1"]
    p = snap.persons["p1"]
    assert p.merges == 2 and p.created == 5 and dict(p.profile) == {"title": "CTO"}
    assert dict(p.identifiers) == {IdType.visitor: ("v1",), IdType.user_id: ("u",)}
    assert drive(_plan_load(IdentityKeys("s1"), []), []) == ([], snap.__class__("s1"))


def test_apply_plan_is_one_transaction_and_digest_is_stable() -> None:
    ops: list[IdentityOp] = [CreatePerson("p", 1), Link(IdType.email, hash_email("a@b.example", "s"), "p", "identify"),
           SetProfile("p", {"b": "2", "a": "1"}), LogEntry("merge", 1, "x")]
    trips, conflicts = drive(_plan_apply(IdentityKeys("s1"), ops, _Settings(), False), [[1, 1, 1, 1, 1]])
    assert len(trips) == 1 and trips[0].transaction and conflicts == 0
    assert ops_digest("s1", ops) == ops_digest("s1", list(ops)) != ops_digest("s2", ops)
    with pytest.raises(ValueError):
        drive(_plan_apply(IdentityKeys("s1"), [Link(IdType.email, "a@b.example", "p", "x")], _Settings(), False), [])


def test_person_row() -> None:
    row = PersonRow.model_validate({"email": " Ada@Acme.Example ", "seniority": "C-Level", "visitor_ids": "a; b;a",
                                    "company_domain": "https://www.acme.example/about"})
    assert row.email == "ada@acme.example" and row.seniority == "c_level" and row.visitor_ids == ["a", "b"]
    assert row.to_identity().profile == {"seniority": "c_level", "company_domain": "acme.example"}
    for bad in ({"name": "x"}, {"email": "null"}, {"user_id": "undefined"}, {"user_id": "u", "visitor_ids": "0"},
                {"user_id": "u", "colour": "red"}):
        with pytest.raises(ValidationError):
            PersonRow.model_validate(bad)


def test_identity_row() -> None:
    row = IdentityRow.model_validate({"id_type": "Visitor-ID", "id_value": "v1", "user_id": "u1"})
    ident = row.to_identity()
    assert row.id_type == "visitor" and ident.visitor_ids == ("v1",) and ident.user_id == "u1"
    for bad in ({"id_type": "email", "id_value": "a@b.example", "email": "c@d.example"},
                {"id_type": "visitor", "id_value": "v1"}, {"id_type": "email", "id_value": "nope", "user_id": "u"},
                {"id_type": "visitor", "id_value": "-1", "user_id": "u"}):
        with pytest.raises(ValidationError):
            IdentityRow.model_validate(bad)
