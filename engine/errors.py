"""The two kinds of error, decided where an error is raised.

- **Transient**: a service is down, a request timed out, the disk is full.  Retrying the same
  step with the same batch can succeed; the worker holds the batch, takes nothing new and
  retries with capped backoff.
- **Permanent**: bad data, a schema that differs from the contract, a request the other side
  rejects, a bug.  Retrying gives the same answer; the worker stops with one clear line (the
  batch stays uncommitted, so it is taken again once the cause is fixed) and the local driver
  ends the run.

An error class says which kind it is with its ``transient`` attribute; ``is_transient`` reads
that, and classifies the errors of the standard library and the client libraries that carry no
such attribute.  Whatever it cannot classify is permanent: retrying an unknown failure forever
hides it.
"""
from __future__ import annotations

#: Errors of the operating system that no retry cures: the operator must change something.
_PERMANENT_OS_ERRORS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)

#: Kafka clients' timeouts (a broker that did not answer in time), transient whatever their
#: ``retriable`` says: aiokafka's ``KafkaTimeoutError`` says False.  Matched by name, so the
#: engine imports neither client.
_KAFKA_TIMEOUTS = frozenset({"KafkaTimeoutError", "RequestTimedOutError"})


class TransientError(RuntimeError):
    """A failure that retrying the same step can cure (a service down, a timeout)."""

    transient = True


class PermanentError(RuntimeError):
    """A failure that retrying cannot cure (bad data, a schema mismatch, a rejected request)."""

    transient = False


def is_transient(exc: BaseException) -> bool:
    """True when retrying the step that raised ``exc`` can succeed.

    In order: the error's own ``transient`` attribute (set where it is raised); a Kafka client's
    timeout, then its ``retriable`` attribute; connection and timeout errors of the standard library and of redis-py,
    and a Redis Cluster's errors of a missing primary;
    other ``OSError`` (a full disk, a reset socket) except the ones that name a missing or
    forbidden path.  Everything else is permanent.
    """
    marked = getattr(exc, "transient", None)
    if isinstance(marked, bool):
        return marked
    if type(exc).__name__ in _KAFKA_TIMEOUTS:  # aiokafka marks its own timeout not retriable
        return True
    retriable = getattr(exc, "retriable", None)  # aiokafka's and kafka-python's errors carry it
    if isinstance(retriable, bool):
        return retriable
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    try:  # redis-py's connection errors do not derive from the standard library's
        from redis.exceptions import ClusterError, RedisClusterUnreachableError, SlotNotCoveredError, TryAgainError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    # a Redis Cluster without a primary for some slots (CLUSTERDOWN, MASTERDOWN, TRYAGAIN, no node
    # reachable or serving a slot) is a server away, not a wrong command; CROSSSLOT is a ResponseError
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterUnreachableError,
                            SlotNotCoveredError, TryAgainError))
