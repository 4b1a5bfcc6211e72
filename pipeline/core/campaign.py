"""Campaign attribution from the landing URL: ``utm_*`` parameters and ad click ids.

Click ids name the paid network: ``gclid``/``gbraid``/``wbraid`` Google, ``msclkid``
Microsoft, ``li_fat_id`` LinkedIn, ``fbclid`` Meta, ``ttclid`` TikTok, ``twclid`` X.
A visit is paid when it carries a click id or its ``utm_medium`` is a paid medium
(cpc, ppc, paid, paidsearch, paid_social, display, cpm, ...). ``fbclid`` is also
appended by Meta to organic shares, so it makes a visit paid only together with a
paid ``utm_medium``; alone it names the network and counts as social.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from .referrer import ReferrerClass, ReferrerInfo

__all__ = ["Campaign", "CLICK_IDS", "PAID_MEDIA", "parse_campaign", "traffic_class"]

CLICK_IDS: dict[str, str] = {
    "gclid": "google", "gbraid": "google", "wbraid": "google", "dclid": "google",
    "msclkid": "microsoft", "li_fat_id": "linkedin", "fbclid": "meta",
    "ttclid": "tiktok", "twclid": "x",
}
_ORGANIC_CAPABLE = frozenset({"fbclid"})
PAID_MEDIA = frozenset({
    "cpc", "ppc", "paid", "paidsearch", "paid_search", "paid-search", "paidsocial", "paid_social",
    "paid-social", "display", "cpm", "cpv", "cpa", "banner", "retargeting", "sem", "ads", "ad",
})
EMAIL_MEDIA = frozenset({"email", "e-mail", "e_mail", "newsletter", "mail"})


@dataclass(frozen=True, slots=True)
class Campaign:
    """Attribution parameters of a landing URL (all lower-case except names and terms)."""
    source: str | None = None
    medium: str | None = None
    name: str | None = None
    term: str | None = None
    content: str | None = None
    click_id_param: str | None = None
    click_network: str | None = None
    paid: bool = False

    def to_dict(self) -> dict[str, str | bool]:
        out: dict[str, str | bool] = {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}
        if self.paid:
            out["paid"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, str | bool]) -> "Campaign":
        return cls(**{k: data.get(k) for k in _FIELDS if data.get(k) is not None},  # type: ignore[arg-type]
                   paid=bool(data.get("paid", False)))


_FIELDS = ("source", "medium", "name", "term", "content", "click_id_param", "click_network")


def parse_campaign(url: str | None) -> Campaign | None:
    """The campaign carried by ``url``'s query string, or None when it carries none."""
    if not url:
        return None
    try:
        params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=False)}
    except ValueError:
        return None
    utm = {k[4:]: v.strip() for k, v in params.items() if k.startswith("utm_") and v.strip()}
    click = next((p for p in CLICK_IDS if params.get(p)), None)
    if not utm and click is None:
        return None
    medium = utm.get("medium", "").lower() or None
    paid_medium = medium in PAID_MEDIA if medium else False
    paid = paid_medium or (click is not None and click not in _ORGANIC_CAPABLE)
    source = utm.get("source", "").lower() or (CLICK_IDS[click] if click else None)
    return Campaign(source=source, medium=medium, name=utm.get("campaign"), term=utm.get("term"),
                    content=utm.get("content"), click_id_param=click,
                    click_network=CLICK_IDS[click] if click else None, paid=paid)


def traffic_class(referrer: ReferrerInfo, campaign: Campaign | None, email_click: bool = False) -> ReferrerClass:
    """The visit's channel: ``paid`` when the campaign is paid; ``email`` for an email
    medium or an email-campaign click id; ``social`` for an organic ``fbclid`` with no
    referrer; else the referrer's own class."""
    if campaign is not None and campaign.paid:
        return ReferrerClass.paid
    if email_click or (campaign is not None and campaign.medium in EMAIL_MEDIA):
        return ReferrerClass.email
    if campaign is not None and campaign.click_id_param in _ORGANIC_CAPABLE and referrer.cls in (
            ReferrerClass.direct, ReferrerClass.other):
        return ReferrerClass.social
    if campaign is not None and campaign.medium == "social" and referrer.cls is ReferrerClass.direct:
        return ReferrerClass.social
    return referrer.cls
