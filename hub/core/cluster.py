"""Hub-to-hub pulls: the WHEP client half of a relay.

A hub process asks another one for a stream with a plain WHEP POST, as any
viewer does, but with a cluster credential (`tokens.issue_node`, signed with
HUB_CLUSTER_SECRET) instead of a user's token. The media then flows over
that WHEP session's DTLS-SRTP, so it is encrypted between machines whatever
the network; `hub.media.relay` does the peer connection. The same
credential fetches a recording's files from the machine that holds them
(`Cluster.ask`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from yarl import URL

from hub.core.records import Stream
from hub.core.tokens import issue_node
from hub.media.relay import RelayError

log = logging.getLogger(__name__)


class Cluster:
    """How this process reaches the others: its credential, and where it pulls from."""

    def __init__(self, secret: str, node_id: str, upstream_url: str | None, timeout: float) -> None:
        self._secret = secret
        self.node_id = node_id
        #: Pull every relayed stream through this hub rather than from its host (a cascade).
        self.upstream_url = upstream_url.rstrip("/") if upstream_url else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    def upstream(self, stream: Stream, direct: bool = False) -> WhepUpstream:
        """The hub to pull `stream` from: the configured upstream, else (or
        if `direct`) its host."""
        base = (not direct and self.upstream_url) or stream["node_url"].rstrip("/")
        return WhepUpstream(self._session(), URL(f"{base}/whep/{stream['id']}"), self._token)

    @contextlib.asynccontextmanager
    async def ask(self, method: str, url: URL, headers: Mapping[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request to another hub process as this one, its body left
        unread and undecoded for the caller to stream on. Only connecting
        and each read are bounded in time: a recording's file may take
        longer than any total."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout.total, sock_read=self._timeout.total)
        async with self._session().request(
            method,
            url,
            headers={**headers, "Authorization": f"Bearer {self._token()}"},
            allow_redirects=False,
            auto_decompress=False,
            timeout=timeout,
        ) as response:
            yield response

    def _token(self) -> str:
        return issue_node(self._secret, self.node_id)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class WhepUpstream:
    """One pull's WHEP session at the upstream hub."""

    def __init__(self, http: aiohttp.ClientSession, url: URL, token: Callable[[], str]) -> None:
        self._http = http
        self.url = url
        self._token = token
        self._location: URL | None = None

    @property
    def session_id(self) -> str | None:
        """The pull's subscription id at the upstream hub, once answered (it names that hub process)."""
        return self._location.name if self._location is not None else None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}"}

    async def exchange(self, offer: str) -> str:
        headers = self._headers() | {"Content-Type": "application/sdp"}
        try:
            async with self._http.post(self.url, data=offer, headers=headers, allow_redirects=False) as response:
                body = await response.text()
                if response.status != 201 or "Location" not in response.headers:
                    raise RelayError(f"{self.url} answered {response.status}: {body[:300]}")
                self._location = response.url.join(URL(response.headers["Location"]))
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RelayError(f"{self.url} could not be reached: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        location, self._location = self._location, None
        if location is None or self._http.closed:
            return
        # The upstream also ends the session when our peer connection closes
        # (DTLS close_notify); the DELETE frees it at once even if that was lost.
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._http.delete(location, headers=self._headers()) as response:
                if response.status >= 400 and response.status != 404:
                    log.info("DELETE %s: %s", location, response.status)
