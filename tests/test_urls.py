"""The one URL redaction (``engine.urls.redact_url``) on every kind of URL the project shows:
Redis and ClickHouse service URLs, robot webhooks, and text that is not a URL."""
from __future__ import annotations

import pytest

from scanstream.engine.urls import redact_url


@pytest.mark.parametrize("url, shown", [
    # service URLs: the user stays, the password goes, wherever it is
    ("redis://:p@ss@h:6379/0?password=x", "redis://:***@h:6379/0?password=***"),
    ("rediss://app:pw@h:6380/1", "rediss://app:***@h:6380/1"),
    ("unix:///run/redis.sock?password=x&db=0", "unix:///run/redis.sock?password=***&db=0"),
    ("https://u:p%40ss@h:8443", "https://u:***@h:8443"),
    ("http://u:p@ss:w@h:8123", "http://u:***@h:8123"),  # an unencoded '@' in the password
    ("http://h:8123", "http://h:8123"),
    ("chdb:/var/lib/x", "chdb:/var/lib/x"),
    # webhooks: credential parameters go, the others keep their exact encoding
    ("https://u:pw@oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1&sign=a%2Bb%3D&x=y%20z",
     "https://u:***@oapi.dingtalk.com/robot/send?access_token=***&timestamp=1&sign=***&x=y%20z"),
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?KEY=abc", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?KEY=***"),
    ("https://TOKEN@h/hook?a%5Fb=1#frag", "https://***@h/hook?a%5Fb=1#frag"),  # a token in the user's place
    ("http://[::1", "http://[::1"),  # not parsable: returned, with nothing to hide
    ("http://u:secret@[::1", "http://u:***@[::1"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
