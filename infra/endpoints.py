"""Where each declared service is reached: decided at synth time from the declarations and
the `service_urls` parameter (CDK context `service_urls`).

* A URL in `service_urls` wins: the service runs elsewhere (the stack builds nothing for it).
* Else a declared `url`: an existing endpoint.
* Else (cloud) `bundled = "<folder>"`: the stack builds it on Fargate.
* Cloud stage: an `http://` URL is refused unless the service's declaration gives
  `plain_http_reason` (printed by synth as a warning).
* Local stage: every service is a local process; its URL comes from `service_urls`, else
  `http://127.0.0.1:<8001 + n>` (n = the service's place in the declaration file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from microprocess.declarations import Declarations

#: The first port the local stage assumes for a service `local up` runs (without `service_urls`).
DEFAULT_LOCAL_PORT = 8001


class EndpointError(ValueError):
    """A service without an endpoint, or a bad `service_urls` entry; the message says the fix."""


@dataclass(frozen=True)
class Endpoint:
    """One service's endpoint in one stage.

    Attributes:
        service: the declared service name.
        url: its queue endpoint base URL, or None when the stack builds it (`bundled`).
        bundled: the folder it is built from, when the stack builds it.
    """

    service: str
    url: str | None
    bundled: str | None = None
    #: Why plain HTTP is accepted for this cloud endpoint (the declaration's `plain_http_reason`).
    plain_http_reason: str | None = None


def parse_service_urls(raw: object) -> dict[str, str]:
    """Context `service_urls`: a JSON object (or an already parsed mapping) `{service: url}`."""
    if raw is None or raw == "":
        return {}
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise EndpointError(
            f"context 'service_urls' must be a JSON object of service name to URL, e.g. "
            f'\'{{"reminders": "https://reminders-queue.example.com"}}\', got {raw!r}'
        )
    return dict(value)


def _checked_url(service: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise EndpointError(
            f"service_urls['{service}'] = {url!r} must be http(s)://host[:port][/prefix], "
            "e.g. 'https://scores-queue.example.com'"
        )
    return url.rstrip("/")


def _cloud_safe(endpoint: Endpoint, local: bool, *, reason: str | None = None) -> Endpoint:
    """`endpoint`, refused in the cloud stage when it is plain `http://` and its declaration
    does not say why that is acceptable (`plain_http_reason`)."""
    if local or not (endpoint.url or "").startswith("http://"):
        return endpoint
    if not reason:
        raise EndpointError(
            f"service '{endpoint.service}' is reached over plain HTTP ({endpoint.url}): items and results would "
            "travel in clear and could be altered on the way. Give an https:// URL, or say why plain HTTP is "
            f"acceptable in [services.{endpoint.service}]: plain_http_reason = 'inside the VPC, private subnets only'"
        )
    return replace(endpoint, plain_http_reason=reason)


def resolve_endpoints(
    declarations: Declarations, service_urls: Mapping[str, str], *, local: bool
) -> dict[str, Endpoint]:
    """Each declared service's endpoint in the stage, by service name (declaration order)."""
    unknown = sorted(set(service_urls) - set(declarations.services.names()))
    if unknown:
        raise EndpointError(
            f"service_urls names undeclared service(s) {unknown}; declared services: {declarations.services.names()}"
        )
    endpoints: dict[str, Endpoint] = {}
    for n, service in enumerate(declarations.services):
        given = service_urls.get(service.name)
        if given is not None:
            endpoints[service.name] = _cloud_safe(
                Endpoint(service.name, _checked_url(service.name, given)), local, reason=service.plain_http_reason
            )
        elif local:
            endpoints[service.name] = Endpoint(service.name, f"http://127.0.0.1:{DEFAULT_LOCAL_PORT + n}")
        elif service.url:
            endpoints[service.name] = _cloud_safe(
                Endpoint(service.name, service.url), local, reason=service.plain_http_reason
            )
        elif service.bundled:
            endpoints[service.name] = Endpoint(service.name, None, bundled=service.bundled)
        else:
            raise EndpointError(
                f"service '{service.name}' has no cloud endpoint (only local_app): declare url = 'https://...' "
                f"or bundled = '<folder>' in [services.{service.name}], or pass "
                f'-c service_urls=\'{{"{service.name}": "https://..."}}\''
            )
    return endpoints
