"""CRM sink: a small CRM interface and its HubSpot implementation (CRM objects API v3, associations v4).

Per lead: the company upserted by domain (search, then update or create), the
contact upserted by email with the batch upsert endpoint (``idProperty=email``)
when the person and their email are known, the two associated, and the scores,
reason line, tier and model version written to custom properties that
``leadstream sinks hubspot-setup`` creates. Another CRM is one class implementing :class:`CRM`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from ..settings import HubSpotSinkSettings
from .base import (Delivered, Failed, Http, HttpResponse, LinksPort, NoProfiles, Outcome, ProfilePort,
                   TransportError, person_profile, retry_after_s)


NOTE_TO_CONTACT = 202  # HubSpot's association type id: note to contact


class CRMError(Exception):
    def __init__(self, message: str, status: int | None = None, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class PropertyDef:
    name: str           # without the prefix
    label: str
    type: str           # HubSpot: number | string | datetime
    field_type: str     # HubSpot: number | text | textarea


LEAD_PROPERTIES = (
    PropertyDef("fit", "Leadstream fit", "number", "number"),
    PropertyDef("intent", "Leadstream intent", "number", "number"),
    PropertyDef("tier", "Leadstream tier", "string", "text"),
    PropertyDef("reason", "Leadstream reason", "string", "textarea"),
    PropertyDef("model_version", "Leadstream model version", "string", "text"),
    PropertyDef("lead_id", "Leadstream lead id", "string", "text"),
    PropertyDef("lead_version", "Leadstream lead version", "number", "number"),
)

#: The properties that say which lead (id and version) last wrote a record: what an in-doubt
#: delivery reads back to tell whether its write took effect.
VERSION_PROPERTIES = ("lead_id", "lead_version")


def lead_properties(lead: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """The custom properties a lead writes (same on the company and the contact). Pure."""
    values = {"fit": f"{float(lead['fit']):g}", "intent": f"{float(lead['intent']):g}", "tier": str(lead["tier"]),
              "reason": str(lead["summary"]), "model_version": str(lead["model_version"]),
              "lead_id": str(lead["lead_id"]), "lead_version": str(int(lead.get("version") or 1))}
    return {prefix + k: v for k, v in values.items()}


def already_written(record: Mapping[str, Any] | None, properties: Mapping[str, str], version_keys: tuple[str, ...],
                    ) -> bool:
    """True when ``record``'s properties (as the CRM returned them) hold the same lead id and
    version that ``properties`` would write: the write took effect before. Pure."""
    if not record or not version_keys:
        return False
    return all(str(record.get(k) if record.get(k) is not None else "") == properties.get(k, "") for k in version_keys)


def company_properties(lead: Mapping[str, Any], prefix: str) -> dict[str, str]:
    company = lead.get("company") or {}
    props = {"domain": str(company["domain"])}
    if company.get("name"):
        props["name"] = str(company["name"])
    if company.get("country"):
        props["country"] = str(company["country"])
    return {**props, **lead_properties(lead, prefix)}


def contact_properties(lead: Mapping[str, Any], profile: Mapping[str, str], prefix: str) -> dict[str, str]:
    props = {"email": profile["email"]}
    first, last = profile.get("first_name"), profile.get("last_name")
    if not (first or last) and profile.get("name"):
        first, _, last = profile["name"].partition(" ")
    if first:
        props["firstname"] = first
    if last:
        props["lastname"] = last
    if profile.get("title"):
        props["jobtitle"] = profile["title"]
    return {**props, **lead_properties(lead, prefix)}


class CRM(Protocol):
    """What the CRM sink needs from a CRM. Every method is idempotent; failures raise CRMError.

    ``check`` names properties (the lead id and version) to read back first: when the record
    already holds the values the write would set, the write is skipped (an in-doubt delivery
    is not applied twice). Each upsert returns the record id and whether it wrote.
    """

    async def upsert_company(self, domain: str, properties: Mapping[str, str], check: tuple[str, ...] = ()
                             ) -> tuple[str, bool]: ...

    async def upsert_contact(self, email: str, properties: Mapping[str, str], check: tuple[str, ...] = ()
                             ) -> tuple[str, bool]: ...

    async def associate(self, contact_id: str, company_id: str) -> None: ...

    async def add_note(self, contact_id: str, body: str, timestamp_ms: int) -> str: ...

    async def setup(self, properties: tuple[PropertyDef, ...], prefix: str) -> list[str]: ...

    def record_url(self, kind: str, record_id: str) -> str | None: ...

    async def aclose(self) -> None: ...


class HubSpot:
    """HubSpot's CRM API with a private-app bearer token."""

    def __init__(self, token: str, base_url: str = "https://api.hubapi.com", portal_id: int | None = None,
                 timeout_s: float = 10.0) -> None:
        self.portal_id = portal_id
        self._client = Http(timeout_s, base_url, {"authorization": f"Bearer {token}"})

    async def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204),
                    ) -> HttpResponse:
        try:
            response = await self._client.request(method, path, json_body=body)
        except TransportError as exc:
            raise CRMError(f"HubSpot {method} {path}: {exc}") from exc
        if response.status_code in ok:
            return response
        code = response.status_code
        message = f"HubSpot {method} {path}: HTTP {code}: {response.text[:300]}"
        if code == 429:
            wait = retry_after_s(response)
            if wait is None:  # HubSpot's rolling window: retry after the interval
                interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds")
                wait = int(interval) / 1000 if interval and interval.isdigit() else 10.0
            raise CRMError(message, code, True, wait)
        raise CRMError(message, code, code == 408 or code >= 500)

    async def _search_company(self, domain: str, properties: tuple[str, ...] = ()
                              ) -> tuple[str, dict[str, Any]] | None:
        """``POST /crm/v3/objects/companies/search`` by domain: (id, the requested properties) or None."""
        body = {"filterGroups": [{"filters": [{"propertyName": "domain", "operator": "EQ", "value": domain}]}],
                "properties": ["domain", *properties], "limit": 1}
        results = (await self._call("POST", "/crm/v3/objects/companies/search", body)).json().get("results") or []
        if not results:
            return None
        return str(results[0]["id"]), dict(results[0].get("properties") or {})

    async def upsert_company(self, domain: str, properties: Mapping[str, str], check: tuple[str, ...] = ()
                             ) -> tuple[str, bool]:
        found = await self._search_company(domain, check)
        if found is None:
            response = await self._call("POST", "/crm/v3/objects/companies", {"properties": dict(properties)},
                                        ok=(200, 201, 409))
            if response.status_code != 409:
                return str(response.json()["id"]), True
            found = await self._search_company(domain, check)  # created meanwhile (a unique domain property)
            if found is None:
                raise CRMError(f"HubSpot: company {domain} conflicts (409) but cannot be found", 409)
        company_id, current = found
        if already_written(current, properties, check):
            return company_id, False
        await self._call("PATCH", f"/crm/v3/objects/companies/{company_id}", {"properties": dict(properties)})
        return company_id, True

    async def read_contact(self, email: str, properties: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
        """``GET /crm/v3/objects/contacts/{email}?idProperty=email``: (id, properties) or None (404)."""
        from urllib.parse import quote, urlencode
        query = urlencode({"idProperty": "email", "properties": ",".join(properties), "archived": "false"})
        response = await self._call("GET", f"/crm/v3/objects/contacts/{quote(email, safe='@')}?{query}",
                                    ok=(200, 404))
        if response.status_code == 404:
            return None
        body = response.json()
        return str(body["id"]), dict(body.get("properties") or {})

    async def upsert_contact(self, email: str, properties: Mapping[str, str], check: tuple[str, ...] = ()
                             ) -> tuple[str, bool]:
        if check:
            found = await self.read_contact(email, check)
            if found is not None and already_written(found[1], properties, check):
                return found[0], False
        body = {"inputs": [{"idProperty": "email", "id": email, "properties": dict(properties)}]}
        results = (await self._call("POST", "/crm/v3/objects/contacts/batch/upsert", body)).json().get("results")
        if not results:
            raise CRMError(f"HubSpot: batch upsert of {email} returned no result", None, False)
        return str(results[0]["id"]), True

    async def associate(self, contact_id: str, company_id: str) -> None:
        await self._call("PUT", f"/crm/v4/objects/contacts/{contact_id}/associations/default/companies/{company_id}")

    async def add_note(self, contact_id: str, body: str, timestamp_ms: int) -> str:
        """A note on the contact (``POST /crm/v3/objects/notes``, associated with the HubSpot-defined
        note-to-contact type 202); returns the note id."""
        from datetime import datetime, timezone
        stamp = datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
        body_json = {"properties": {"hs_timestamp": stamp.replace("+00:00", "Z"), "hs_note_body": body},
                     "associations": [{"to": {"id": contact_id}, "types": [
                         {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": NOTE_TO_CONTACT}]}]}
        return str((await self._call("POST", "/crm/v3/objects/notes", body_json)).json()["id"])

    async def setup(self, properties: tuple[PropertyDef, ...], prefix: str) -> list[str]:
        """Create the property group and custom properties on companies and contacts (409: exists, fine)."""
        created = []
        for object_type in ("companies", "contacts"):
            await self._call("POST", f"/crm/v3/properties/{object_type}/groups",
                             {"name": "leadstream", "label": "Leadstream"}, ok=(200, 201, 409))
            for prop in properties:
                response = await self._call("POST", f"/crm/v3/properties/{object_type}", {
                    "name": prefix + prop.name, "label": prop.label, "type": prop.type,
                    "fieldType": prop.field_type, "groupName": "leadstream"}, ok=(200, 201, 409))
                if response.status_code != 409:
                    created.append(f"{object_type}.{prefix}{prop.name}")
        return created

    def record_url(self, kind: str, record_id: str) -> str | None:
        if self.portal_id is None:
            return None
        object_type = {"company": "0-2", "contact": "0-1"}[kind]
        return f"https://app.hubspot.com/contacts/{self.portal_id}/record/{object_type}/{record_id}"

    async def aclose(self) -> None:
        await self._client.aclose()


class CrmSink:
    """Writes a lead to a :class:`CRM`: company, contact (when its email is known), association."""

    kind = "hubspot"

    def __init__(self, crm: CRM, prefix: str, profiles: ProfilePort | None = None,
                 links: LinksPort | None = None) -> None:
        self.crm = crm
        self.prefix = prefix
        self.profiles = profiles or NoProfiles()
        self.links = links

    @classmethod
    def hubspot(cls, config: HubSpotSinkSettings, profiles: ProfilePort | None = None,
                links: LinksPort | None = None) -> "CrmSink":
        return cls(HubSpot(config.token.get_secret_value(), config.base_url, config.portal_id, config.timeout_s),
                   config.property_prefix, profiles, links)

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        return await self._deliver(lead, False)

    async def deliver_in_doubt(self, lead: Mapping[str, Any], since_ms: int) -> Outcome:
        """An earlier attempt may have written: read the company and the contact back and write
        only what does not hold this lead (id and version) yet."""
        return await self._deliver(lead, True)

    async def _deliver(self, lead: Mapping[str, Any], in_doubt: bool) -> Outcome:
        try:
            return await self._write(lead, in_doubt)
        except CRMError as exc:
            return Failed(str(exc), exc.retryable, exc.status, exc.retry_after)

    async def _write(self, lead: Mapping[str, Any], in_doubt: bool = False) -> Outcome:
        site_id, account, tstamp = str(lead["site_id"]), str(lead["account"]), int(lead.get("tstamp") or 0)
        if self.links is not None:  # a retried older lead must not overwrite a newer one's scores
            newest = int((await self.links.crm_links(site_id, account)).get("lead_tstamp") or 0)
            if tstamp < newest:
                return Delivered(f"superseded: the CRM already has a lead of {account} from {newest}")
        profile = await person_profile(lead, self.profiles)
        check = tuple(self.prefix + k for k in VERSION_PROPERTIES) if in_doubt else ()
        company_id = contact_id = None
        wrote = False
        if lead.get("company"):
            company_id, w = await self.crm.upsert_company(str(lead["company"]["domain"]),
                                                          company_properties(lead, self.prefix), check)
            wrote = wrote or w
        if profile.get("email"):
            contact_id, w = await self.crm.upsert_contact(profile["email"],
                                                          contact_properties(lead, profile, self.prefix), check)
            wrote = wrote or w
        if company_id and contact_id:
            await self.crm.associate(contact_id, company_id)
        if company_id is None and contact_id is None:
            return Delivered("nothing to write: no company and no known email")
        links = {k: url for k, url in (("company_url", company_id and self.crm.record_url("company", company_id)),
                                       ("contact_url", contact_id and self.crm.record_url("contact", contact_id)))
                 if url}
        if self.links is not None:
            await self.links.set_crm_links(site_id, account, {**links, "lead_tstamp": str(tstamp)})
        return Delivered(f"company {company_id}, contact {contact_id}" + ("" if wrote else " (already written)"),
                         already=in_doubt and not wrote)

    async def aclose(self) -> None:
        await self.crm.aclose()
