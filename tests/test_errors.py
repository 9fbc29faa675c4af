"""The two kinds of error: each failure the worker can meet is classified as transient (hold the
batch and retry) or permanent (stop with one line), where it is raised or by ``is_transient``."""
from __future__ import annotations

import errno

import pytest
import redis

from scanstream.engine.errors import PermanentError, TransientError, is_transient
from scanstream.engine.state import StateUnavailable
from scanstream.engine.state.embedded import StateFileError, StateInUse
from scanstream.sinks.clickhouse import _transient
from scanstream.sinks.exceptions import SinkError


@pytest.mark.parametrize("exc, transient", [
    (TransientError("x"), True),
    (PermanentError("x"), False),
    (StateUnavailable("Redis down"), True),
    (StateInUse("another process holds the file"), False),
    (StateFileError("not a state file"), False),
    (SinkError("insert refused"), False),
    (SinkError("server unreachable", transient=True), True),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
    (TimeoutError("timed out"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (PermissionError(errno.EACCES, "denied"), False),
    (FileNotFoundError(errno.ENOENT, "missing"), False),
    (redis.ConnectionError("Error 111"), True),
    (redis.TimeoutError("Timeout reading"), True),
    (redis.exceptions.NoPermissionError("no permissions to run 'evalsha'"), False),
    # a Redis Cluster that lost a primary says so until it is back or failed over (found by the
    # Cluster outage test: the reply push stopped the worker on it)
    (redis.exceptions.ClusterDownError("The cluster is down"), True),
    (redis.exceptions.MasterDownError("MASTERDOWN"), True),
    (redis.exceptions.TryAgainError("TRYAGAIN"), True),
    (redis.exceptions.ClusterError("TTL exhausted."), True),
    (redis.exceptions.RedisClusterUnreachableError("Redis Cluster cannot be connected"), True),
    (redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node"), False),
    (redis.exceptions.SlotNotCoveredError("slot 42 is not covered"), True),
    (redis.exceptions.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"), False),
    (redis.ResponseError("WRONGTYPE Operation against a key"), False),
    (ValueError("bad data"), False),
    (KeyError("campaign"), False),
])
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_kafka_errors_of_both_clients():
    import aiokafka.errors
    import kafka.errors

    for errors in (kafka.errors, aiokafka.errors):
        assert is_transient(errors.KafkaTimeoutError()) is True  # aiokafka's says retriable = False
        assert is_transient(errors.KafkaConnectionError()) is True
        assert is_transient(errors.MessageSizeTooLargeError()) is False


@pytest.mark.parametrize("message, transient", [
    ("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)", True),
    ("Code: 1001. DB::Exception: filesystem error: in create_directories: Operation not permitted", True),
    ("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)", True),
    # what an immutable chdb storage answered in the outage fault test (as root, chattr +i)
    ("Code: 481. DB::Exception: Cannot set modification time to file: /tmp/x/store/tmp_insert_1/: , errno: 1, "
     "strerror: Operation not permitted: while pushing to view scanstream.diversion_minute_mv. (PATH_ACCESS_DENIED)",
     True),
    ("Code: 458. DB::Exception: Cannot unlink file /tmp/x/store/a.bin, errno: 30, strerror: Read-only file system. "
     "(CANNOT_UNLINK)", True),
    ("Code: 16. DB::Exception: No such column reason in table scan_events. (NO_SUCH_COLUMN_IN_TABLE)", False),
    ("Code: 53. DB::Exception: Type mismatch in VALUES section. (TYPE_MISMATCH)", False),
    ("Code: 60. DB::Exception: Table default.awards does not exist. (UNKNOWN_TABLE)", False),
    ("a message without a code", False),
])
def test_clickhouse_errors_are_classified_by_their_code(message, transient):
    assert _transient(RuntimeError(message)) is transient
