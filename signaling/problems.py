"""Errors as RFC 9457 problem details, and the middleware that maps the
hub's exceptions onto them so handlers can simply raise."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from pydantic import ValidationError

from hub.core.access import Forbidden
from hub.core.livestate import PROBE_SECONDS, ActFailed, Unavailable
from hub.core.quotas import QuotaExceeded
from hub.core.rooms import Elsewhere, NotFound
from hub.core.tokens import TokenError
from hub.media.relay import RelayError
from hub.media.router import SdpError, StreamEnded

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail


T = TypeVar("T")


def service(request: web.Request, key: web.AppKey[T], missing: str) -> T:
    """A feature's service, or a 503 saying what this hub process does not do
    (`missing`): make_app leaves out the services a process runs without."""
    found = request.app.get(key)
    if found is None:
        raise Problem(503, "Service Unavailable", missing)
    return found


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    instance: str = "",
    headers: dict[str, str] | None = None,
    members: dict[str, object] | None = None,
) -> web.Response:
    """`members`: extension members (RFC 9457 §3.2), e.g. the record a 409 was about."""
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body |= members or {}
    if status == 401:
        headers = (headers or {}) | {"WWW-Authenticate": 'Bearer realm="hub"'}
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_TYPE, headers=headers
    )


def validation_detail(exc: ValidationError) -> str:
    """The first thing wrong with a message or body, and where: `layouts.0.grid: ...`."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line past its 8 KiB
    limit, a broken header) with a traceback, once per request: the client's
    fault, answered 400, so one line without the traceback says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg, record.args = "refused a malformed request: %s", (exc.message,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_malformed_requests() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.title, exc.detail, path)
    except TokenError as exc:
        return problem_response(401, "Unauthorized", str(exc), path)
    except Forbidden as exc:
        return problem_response(403, "Forbidden", str(exc), path)
    except (NotFound, StreamEnded) as exc:
        return problem_response(404, "Not Found", str(exc), path)
    except RelayError as exc:  # the stream's host (or upstream hub) did not give it to this process
        return problem_response(502, "Bad Gateway", str(exc), path)
    except ActFailed as exc:  # the hub process owning the thing failed the act asked of it
        return problem_response(502, "Bad Gateway", f"the owning hub process failed: {exc.detail}", path)
    except QuotaExceeded as exc:
        retry = {"Retry-After": str(exc.retry_after)}
        return problem_response(429, "Too Many Requests", str(exc), path, retry)
    except Unavailable as exc:
        # Not the client's fault and soon over: the hub probes Redis every PROBE_SECONDS.
        retry = {"Retry-After": str(max(1, round(PROBE_SECONDS)))}
        return problem_response(503, "Service Unavailable", str(exc), path, retry)
    except Elsewhere as exc:
        raise web.HTTPTemporaryRedirect(exc.url + request.path_qs) from exc
    except SdpError as exc:
        return problem_response(400, "Bad SDP offer", str(exc), path)
    except ValidationError as exc:  # a body a feature's model refused (a ValueError, told briefly)
        return problem_response(400, "Bad Request", validation_detail(exc), path)
    except ValueError as exc:
        return problem_response(400, "Bad Request", str(exc), path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = "" if exc.text == f"{exc.status}: {exc.reason}" else (exc.text or "")
        # A 405 says which methods the path takes (RFC 9110 §15.5.6).
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(exc.status, exc.reason, detail, path, allow)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, path)
        return problem_response(500, "Internal Server Error", "the hub logged the details", path)
