from __future__ import annotations

import pytest

from pipeline.core.identity import (CreatePerson, IdentityConfig, IdentitySnapshot, IdType as T, ImportedIdentity,
                                    Link, LinkRecord, LogEntry, Merge, PersonRecord, SetProfile, apply_identity_events,
                                    apply_ops, forget_person, hash_email, import_identity, is_blocked,
                                    link_identifiers, normalize_email, resolve_visitor)

from .helpers import T0, ev

SALT = "pepper"
EMPTY = IdentitySnapshot("s1")


def person(snap: IdentitySnapshot, pid: str, ids: dict[T, tuple[str, ...]], merges: int = 0, created: int = 0,
           source: str = "identify") -> IdentitySnapshot:
    links = dict(snap.links)
    for t, vs in ids.items():
        for v in vs:
            links[(t, v)] = LinkRecord(pid, source)
    persons = dict(snap.persons)
    persons[pid] = PersonRecord(pid, ids, merges, created)
    return IdentitySnapshot(snap.site_id, links, persons)


def kinds(ops: tuple[object, ...]) -> list[str]:
    return [o.kind if isinstance(o, LogEntry) else type(o).__name__ for o in ops]


class TestValues:
    @pytest.mark.parametrize("v", ["", "   ", "0", "000", "--", "0-0", "-1", "null", "None", "none", "NaN",
                                   "undefined", "anonymous", "guest", "true", "false", "[object Object]", "id",
                                   "email", "not_authenticated", " Undefined "])
    def test_blocked(self, v: str) -> None:
        assert is_blocked(v)

    @pytest.mark.parametrize("v", ["u-123", "10", "a@b.co", "visitor-1"])
    def test_not_blocked(self, v: str) -> None:
        assert not is_blocked(v)

    def test_email_normalised_and_salted(self) -> None:
        assert normalize_email("  Jane.Doe@ACME.com ") == "jane.doe@acme.com"
        assert normalize_email("not an email") is None and normalize_email(None) is None
        h = hash_email("jane@acme.com", SALT)
        assert len(h) == 64 and h != hash_email("jane@acme.com", "other")


class TestLinking:
    def test_new_person_is_deterministic(self) -> None:
        r1 = link_identifiers(EMPTY, [(T.visitor, "v1"), (T.user_id, "u1")], tstamp=T0, source="identify")
        r2 = link_identifiers(EMPTY, [(T.visitor, "v1"), (T.user_id, "u1")], tstamp=T0, source="identify")
        assert r1.person_id == r2.person_id and r1.ops == r2.ops
        assert kinds(r1.ops) == ["CreatePerson", "Link", "Link"]
        assert r1.ops[1] == Link(T.user_id, "u1", r1.person_id, "identify")   # priority order
        assert r1.linked_visitors == ("v1",)
        assert r1.snapshot.links[(T.visitor, "v1")].person_id == r1.person_id

    def test_blocked_values_logged_not_linked(self) -> None:
        r = link_identifiers(EMPTY, [(T.user_id, "undefined"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert kinds(r.ops)[0] == "blocked"
        assert (T.user_id, "undefined") not in r.snapshot.links
        all_blocked = link_identifiers(EMPTY, [(T.user_id, "null")], tstamp=T0, source="identify")
        assert all_blocked.person_id is None and kinds(all_blocked.ops) == ["blocked"]

    def test_existing_person_gets_new_identifier(self) -> None:
        snap = person(EMPTY, "P", {T.user_id: ("u1",)})
        r = link_identifiers(snap, [(T.user_id, "u1"), (T.visitor, "v2")], tstamp=T0, source="login")
        assert r.person_id == "P" and kinds(r.ops) == ["Link"] and r.linked_visitors == ("v2",)

    def test_identify_links_earlier_anonymous_person(self) -> None:
        # the visitor had an anonymous person (e.g. from an email click id); identify merges into it
        snap = person(EMPTY, "A", {T.visitor: ("v1",), T.email_click: ("c1",)}, source="email_click")
        r = link_identifiers(snap, [(T.user_id, "u1"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert r.person_id == "A" and r.snapshot.persons["A"].identifiers[T.user_id] == ("u1",)

    def test_merge_two_persons_one_identified(self) -> None:
        snap = person(EMPTY, "ID", {T.user_id: ("u1",), T.visitor: ("v0",)}, created=5)
        snap = person(snap, "ANON", {T.visitor: ("v1", "v9")}, created=1)
        r = link_identifiers(snap, [(T.user_id, "u1"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert r.person_id == "ID"   # the identified person survives even though ANON is older
        merge = next(o for o in r.ops if isinstance(o, Merge))
        assert (merge.from_person, merge.into_person, merge.merges_after) == ("ANON", "ID", 1)
        assert "merge" in kinds(r.ops)           # every merge is logged
        assert "ANON" not in r.snapshot.persons
        assert r.snapshot.links[(T.visitor, "v9")].person_id == "ID"
        assert set(r.linked_visitors) == {"v1", "v9"}

    def test_never_merge_two_identified(self) -> None:
        snap = person(EMPTY, "P1", {T.user_id: ("u1",), T.visitor: ("v1",)})
        snap = person(snap, "P2", {T.email: ("h2",)})
        r = link_identifiers(snap, [(T.email, "h2"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert "double_identified" in kinds(r.ops) and not any(isinstance(o, Merge) for o in r.ops)
        # the visitor (lowest priority) was dropped; the email stays with its person
        assert r.person_id == "P2" and r.snapshot.links[(T.visitor, "v1")].person_id == "P1"

    def test_user_id_limit_drops_visitor_and_creates_new_person(self) -> None:
        snap = person(EMPTY, "P", {T.user_id: ("u1",), T.visitor: ("shared",)})
        r = link_identifiers(snap, [(T.user_id, "u2"), (T.visitor, "shared")], tstamp=T0, source="login")
        assert kinds(r.ops)[:2] == ["limit", "CreatePerson"]
        assert r.person_id not in (None, "P")
        assert r.snapshot.links[(T.visitor, "shared")].person_id == "P"
        assert r.snapshot.links[(T.user_id, "u2")].person_id == r.person_id

    def test_email_limit_five(self) -> None:
        snap = person(EMPTY, "P", {T.email: tuple(f"h{i}" for i in range(5)), T.visitor: ("v1",)})
        r = link_identifiers(snap, [(T.email, "h6"), (T.visitor, "v1")], tstamp=T0, source="form")
        assert "limit" in kinds(r.ops) and r.person_id != "P"
        four = person(EMPTY, "P", {T.email: tuple(f"h{i}" for i in range(4)), T.visitor: ("v1",)})
        assert link_identifiers(four, [(T.email, "h6"), (T.visitor, "v1")], tstamp=T0,
                                source="form").person_id == "P"

    def test_limit_inside_one_event(self) -> None:
        r = link_identifiers(EMPTY, [(T.user_id, "a"), (T.user_id, "b")], tstamp=T0, source="identify")
        assert kinds(r.ops)[0] == "limit" and r.snapshot.persons[r.person_id].identifiers[T.user_id] == ("a",)

    def test_visitor_limit_configurable(self) -> None:
        cfg = IdentityConfig(limits={T.user_id: 1, T.visitor: 2})
        snap = person(EMPTY, "P", {T.user_id: ("u1",), T.visitor: ("a", "b")})
        r = link_identifiers(snap, [(T.user_id, "u1"), (T.visitor, "c")], tstamp=T0, source="login", cfg=cfg)
        assert r.person_id == "P" and (T.visitor, "c") not in r.snapshot.links and "limit" in kinds(r.ops)

    def test_merge_cap_100(self) -> None:
        snap = person(EMPTY, "ID", {T.user_id: ("u1",)}, merges=100)
        snap = person(snap, "ANON", {T.visitor: ("v1",)})
        r = link_identifiers(snap, [(T.user_id, "u1"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert "merge_cap" in kinds(r.ops) and r.person_id == "ID"
        assert r.snapshot.links[(T.visitor, "v1")].person_id == "ANON"
        ok = person(person(EMPTY, "ID", {T.user_id: ("u1",)}, merges=99), "ANON", {T.visitor: ("v1",)})
        r2 = link_identifiers(ok, [(T.user_id, "u1"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert r2.snapshot.persons["ID"].merges == 100

    def test_merge_counts_inherited_merges(self) -> None:
        snap = person(EMPTY, "ID", {T.user_id: ("u1",)}, merges=90)
        snap = person(snap, "ANON", {T.visitor: ("v1",)}, merges=10)
        r = link_identifiers(snap, [(T.user_id, "u1"), (T.visitor, "v1")], tstamp=T0, source="identify")
        assert "merge_cap" in kinds(r.ops)

    def test_click_never_creates(self) -> None:
        r = link_identifiers(EMPTY, [(T.email_click, "c1"), (T.visitor, "v1")], tstamp=T0, source="email_click",
                             create=False)
        assert r.person_id is None and kinds(r.ops) == ["unknown_click"]

    def test_click_matches_email_hash(self) -> None:
        snap = person(EMPTY, "P", {T.email: ("h1",)}, source="import")
        r = link_identifiers(snap, [(T.email_click, "h1"), (T.visitor, "v1")], tstamp=T0, source="email_click",
                             create=False)
        assert r.person_id == "P" and r.snapshot.links[(T.visitor, "v1")] == LinkRecord("P", "email_click")


class TestEventsAndResolution:
    def test_identify_event_hashes_email_and_keeps_domain(self) -> None:
        e = ev(T0, "identify", email=" Jane@Acme.com ", identify_user_id="u1",
               properties_json='{"title": "VP Marketing", "seniority": "vp", "junk": {"x": 1}}')
        r = apply_identity_events(EMPTY, [e], SALT)
        rec = r.snapshot.persons[r.person_id or ""]
        assert rec.identifiers[T.email] == (hash_email("jane@acme.com", SALT),)
        assert rec.profile == {"company_domain": "acme.com", "title": "VP Marketing", "seniority": "vp"}
        assert "jane@acme.com" not in repr(r.ops)            # never stored in plain text
        res = resolve_visitor(r.snapshot, "v1")
        assert res.confidence == 0.5 and res.source == "identify" and res.person is not None and res.person.company_domain == "acme.com"
        assert res.evidence[0].source == "identity:identify"

    def test_free_mail_domain_not_a_company(self) -> None:
        r = apply_identity_events(EMPTY, [ev(T0, "form_submit", email="joe@gmail.com")], SALT)
        assert "company_domain" not in r.snapshot.persons[r.person_id or ""].profile

    def test_login_user_id_on_page_view(self) -> None:
        r = apply_identity_events(EMPTY, [ev(T0, user_id="u7")], SALT)
        assert resolve_visitor(r.snapshot, "v1").evidence[0].source == "identity:login"

    def test_email_click_confidence(self) -> None:
        snap = import_identity(EMPTY, ImportedIdentity(email="jane@acme.com", email_click_ids=("c9",)),
                               tstamp=T0, salt=SALT).snapshot
        r = apply_identity_events(snap, [ev(T0 + 1, email_click_id="c9")], SALT)
        res = resolve_visitor(r.snapshot, "v1")
        assert res.confidence == 1.0 and res.source == "email_click" and r.linked_visitors == ("v1",)
        assert res.person is not None and res.person.email == "jane@acme.com"   # owner-supplied: kept

    def test_invalid_email_logged(self) -> None:
        r = apply_identity_events(EMPTY, [ev(T0, "identify", email="nope")], SALT)
        assert kinds(r.ops) == ["invalid_email"] and r.person_id is None

    def test_no_identity_signal(self) -> None:
        r = apply_identity_events(EMPTY, [ev(T0)], SALT)
        assert r.ops == () and r.person_id is None
        assert resolve_visitor(EMPTY, "v1").confidence == 0 and resolve_visitor(EMPTY, None).person is None

    def test_later_activity_resolves(self) -> None:
        r = apply_identity_events(EMPTY, [ev(T0, "identify", identify_user_id="u1")], SALT)
        later = apply_identity_events(r.snapshot, [ev(T0 + 10_000)], SALT)
        assert later.person_id == r.person_id

    def test_import_profile_and_confidence(self) -> None:
        r = import_identity(EMPTY, ImportedIdentity(email="CTO@Acme.com", crm_id="crm-1", visitor_ids=("v1",),
                                                    profile={"seniority": "c_level"}), tstamp=T0, salt=SALT)
        assert r.snapshot.persons[r.person_id or ""].profile["email"] == "cto@acme.com"
        res = resolve_visitor(r.snapshot, "v1")
        assert res.confidence == 1.0 and res.person is not None and res.person.seniority == "c_level"

    def test_forget(self) -> None:
        r = import_identity(EMPTY, ImportedIdentity(email="a@acme.com", visitor_ids=("v1",)), tstamp=T0, salt=SALT)
        f = forget_person(r.snapshot, r.person_id or "", T0 + 1)
        assert f.snapshot.links == {} and f.snapshot.persons == {}
        assert kinds(f.ops) == ["ForgetPerson", "forget"]
        # the log entry left behind names neither the person nor any identifier
        entry = f.ops[-1]
        assert isinstance(entry, LogEntry) and entry.persons == () and entry.identifiers == ()
        assert (r.person_id or "?") not in entry.detail and "v1" not in entry.detail

    def test_apply_ops_profile_merge(self) -> None:
        snap = apply_ops(EMPTY, [CreatePerson("A", 1), CreatePerson("B", 2), SetProfile("A", {"title": "x"}),
                                 SetProfile("B", {"title": "y", "name": "n"}), Link(T.visitor, "v", "B", "identify"),
                                 Merge("B", "A", ((T.visitor, "v"),), 1, 3)])
        assert snap.persons["A"].profile == {"title": "x", "name": "n"}
        assert snap.links[(T.visitor, "v")] == LinkRecord("A", "identify")
