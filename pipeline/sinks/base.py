"""The contract every sink implements, and the outcomes of one delivery attempt."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping, Protocol

import aiohttp


@dataclass(frozen=True)
class Delivered:
    detail: str = ""
    already: bool = False   # an in-doubt delivery found already applied at the receiver (nothing sent)


@dataclass(frozen=True)
class Failed:
    """A failed attempt. ``retryable`` False means the receiver refused the lead for good."""
    error: str
    retryable: bool = True
    status_code: int | None = None
    retry_after_s: float | None = None


Outcome = Delivered | Failed


class Sink(Protocol):
    """One configured destination. ``deliver`` never raises for a receiver's failure: it
    returns :class:`Failed`; it must be safe to call again for the same lead (receivers
    get the lead id as the idempotency key)."""

    kind: str

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome: ...

    async def aclose(self) -> None: ...


class ResolvesInDoubt(Protocol):
    """A sink that can tell whether an earlier, unrecorded send of a lead took effect.

    The runner calls :meth:`deliver_in_doubt` instead of ``deliver`` when the delivery's
    in-flight marker was already there (an earlier attempt started at ``since_ms`` and was
    never recorded: a crash, a timeout). It must not apply the lead a second time: it reads
    the receiver's state first and returns ``Delivered(already=True)`` when the effect is
    there, or sends the parts that are missing. A sink without it is resent as is (the
    webhook: same ``webhook-id``, which receivers de-duplicate on).
    """

    async def deliver_in_doubt(self, lead: Mapping[str, Any], since_ms: int) -> Outcome: ...


RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class HttpResponse:
    status_code: int
    headers: Mapping[str, str]   # case-insensitive (aiohttp's CIMultiDictProxy)
    text: str

    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


class TransportError(Exception):
    """No answer: a timeout or a connection error."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Http:
    """A small async HTTP client for the sinks (aiohttp: a fraction of httpx's CPU per request).

    The session is made on first use, inside the running loop; redirects are not followed.
    """

    def __init__(self, timeout_s: float, base_url: str = "", headers: Mapping[str, str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, url: str, *, content: bytes | None = None, json_body: Any = None,
                      headers: Mapping[str, str] | None = None) -> HttpResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers)
        data = content if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        sent = {"content-type": "application/json", **(headers or {})} if data is not None else dict(headers or {})
        try:
            async with self._session.request(method, self.base_url + url, data=data, headers=sent,
                                             allow_redirects=False,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as response:
                text = await response.text(errors="replace")
                return HttpResponse(response.status, response.headers, text)
        except asyncio.TimeoutError as exc:
            raise TransportError(f"timeout after {self.timeout_s:g} s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def retry_after_s(response: HttpResponse) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def http_outcome(response: HttpResponse) -> Outcome:
    """2xx delivered; 408, 429 and 5xx retried (honouring Retry-After); anything else refused."""
    code = response.status_code
    if 200 <= code < 300:
        return Delivered(f"HTTP {code}")
    error = f"HTTP {code}: {response.text[:300]}"
    if code in RETRYABLE_STATUS or code >= 500:
        return Failed(error, True, code, retry_after_s(response))
    return Failed(error, False, code)


def transport_failure(exc: TransportError) -> Failed:
    """A request that got no answer: a timeout or a connection error, always retried."""
    return Failed(str(exc))


def lead_json(lead: Mapping[str, Any]) -> str:
    """The lead as compact JSON (field order as in the schema)."""
    return json.dumps(lead, separators=(",", ":"), ensure_ascii=False)


class ProfilePort(Protocol):
    async def profile(self, site_id: str, person_id: str) -> dict[str, str]: ...


class LinksPort(Protocol):
    async def crm_links(self, site_id: str, account: str) -> dict[str, str]: ...

    async def set_crm_links(self, site_id: str, account: str, links: Mapping[str, str]) -> None: ...


class NoProfiles:
    async def profile(self, site_id: str, person_id: str) -> dict[str, str]:
        return {}


class MemoryLinks:
    """Dict-backed LinksPort (tests; a process without Redis)."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str], dict[str, str]] = {}

    async def crm_links(self, site_id: str, account: str) -> dict[str, str]:
        return dict(self.links.get((site_id, account), {}))

    async def set_crm_links(self, site_id: str, account: str, links: Mapping[str, str]) -> None:
        self.links.setdefault((site_id, account), {}).update(links)


async def person_profile(lead: Mapping[str, Any], profiles: ProfilePort) -> dict[str, str]:
    """The lead's person's profile (email, name, title...) when a person is known, else {}."""
    person = lead.get("person")
    if not person:
        return {}
    return await profiles.profile(str(lead["site_id"]), str(person["person_id"]))
