"""Credentials out of URLs: the one redaction for every URL a message, log line or row shows.

Service URLs (Redis, ClickHouse) carry a password in their userinfo or a ``password=`` query
parameter; robot webhooks (WeCom ``key``, DingTalk ``access_token`` and ``sign`` ...) carry
theirs in the query.  ``redact_url`` replaces each such value by ``REDACTED`` and keeps the rest
byte for byte, so a recorded URL stays comparable and names its host.
"""
from __future__ import annotations

import re
import urllib.parse

#: Shown instead of a credential.
REDACTED = "***"

#: Query parameters whose values are credentials (compared case-insensitively, after unquoting).
SECRET_PARAMS: frozenset[str] = frozenset({
    "key", "access_token", "token", "sign", "signature", "sig", "secret", "password", "apikey", "api_key",
})

# for text that is not a parsable URL: greedy up to the last '@' of the netloc, as urlsplit
# reads it, so an unencoded '@' in a password does not leave the rest of it visible
_USERINFO = re.compile(r"(//[^/@:]*:)([^/]*)(@)")


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``REDACTED``.

    Userinfo: a password becomes ``REDACTED`` and the user stays (``redis://app:***@host``); a user
    without a password (``https://TOKEN@host``, a token in the user's place) becomes ``REDACTED``.
    Query: the values of ``SECRET_PARAMS``.  Everything else, encoding included, is unchanged;
    text that is not a URL (``chdb:/var/lib/x``) comes back as it was.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: still hide a userinfo password
        return _USERINFO.sub(lambda m: m.group(1) + REDACTED + m.group(3), url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, _, _ = pair.partition("=")
        if urllib.parse.unquote_plus(name).lower() in SECRET_PARAMS:
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    query = "&".join(pairs)
    # spliced into the text rather than rebuilt: urlunsplit would drop the empty netloc of
    # ``unix:///path`` and re-encode nothing else, but splicing keeps every byte by construction
    if netloc != parts.netloc:
        url = url.replace(f"//{parts.netloc}", f"//{netloc}", 1)
    if query != parts.query:
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    return url
