"""A remote tracking server checked before a stage starts, and MLflow's HTTP retry limits.

MLflow's defaults (7 retries, backoff factor 2, 120 s per request) make a dead server cost a stage
about 4 minutes (measured: 250 s) before it fails; :data:`HTTP_DEFAULTS` bring that down to
seconds while still riding out a server restart. They are defaults only: a variable already set
in the environment wins.
"""

from __future__ import annotations

import logging
import os
import ssl
import urllib.error
import urllib.request

from .locations import local_store_uri

log = logging.getLogger(__name__)

# urllib3 backs off factor * 2**(n-1) s before retry n > 1 (+ up to 1 s jitter): 4 retries wait
# ~0 + 2 + 4 + 8 s, so a dead server fails a logging call in ~15-20 s, and a restart that takes
# ~10 s is survived. 30 s per request: a stalled connection is not waited on for 2 minutes.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PROBE_TIMEOUT_S = 5.0  # the check before the stage: one request, no retries
FALLBACK_SETTING = "tracking.fallback_to_local"


class TrackingServerUnreachable(RuntimeError):
    """The tracking server in ``MLFLOW_TRACKING_URI`` did not answer before the stage started."""


def set_http_defaults() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _ssl_context() -> ssl.SSLContext | None:
    """The TLS settings MLflow's own client honours, so the probe judges the server as MLflow will."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the server at ``uri`` answers ``GET <uri>/health``, else why not.

    Any HTTP answer below 500 counts as alive (401/403/404: the server is there, and MLflow's own
    error will say what is wrong); a 5xx is a proxy in front of a dead server."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_ssl_context()):
            return None
    except urllib.error.HTTPError as err:
        return None if err.code < 500 else f"HTTP {err.code} from {url}"
    except OSError as err:  # refused, DNS, TLS, timeout (URLError and socket.timeout are OSErrors)
        return str(getattr(err, "reason", None) or err)


def reachable_uri(uri: str, fallback: bool) -> tuple[str, str | None]:
    """``(uri to use, the unreachable uri it replaces or None)``.

    A non-HTTP store (sqlite, file) is not checked. An HTTP server that does not answer raises
    :class:`TrackingServerUnreachable` (one line naming it) or, with ``fallback``, is replaced by
    the local sqlite store with a warning."""
    if not is_http(uri):
        return uri, None
    reason = probe(uri)
    if reason is None:
        return uri, None
    local = local_store_uri()
    if not fallback:
        raise TrackingServerUnreachable(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, unset "
            f"MLFLOW_TRACKING_URI to log to {local}, or set {FALLBACK_SETTING}=true to fall back to it")
    log.warning("MLflow tracking server %s is unreachable (%s); %s: logging to the local store %s instead",
                uri, reason, FALLBACK_SETTING, local)
    return local, uri
