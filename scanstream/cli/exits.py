"""The exit statuses of the ``scanstream`` command, in one place.

Each says what a caller (a shell script, systemd, a scheduler) should do next, so the statuses
are distinct: fix the command line (2), fix the configuration (3), fix the data (4), wait for a
service and run the same command again (5), free or fix the disk (6).  ``scanstream.cli.main``
maps the exceptions to these; a sub-command returns one of them for what it checks itself.
The table in README "## CLI" documents them; keep the two in step.
"""
from __future__ import annotations

#: Success.
OK = 0
#: The command ran and its answer is "not all good": ``codes verify`` saw a code that is not
#: ``ok``, ``alerts retry`` left deliveries pending or failed.  Not an error of the command.
CHECK_FAILED = 1
#: A usage error: an unknown option or a value the options do not allow (argparse exits with 2
#: too), or options that contradict each other (``--results`` naming the ``--input`` file, an
#: existing file ``init`` would overwrite without ``--force``).
USAGE = 2
#: The configuration file is missing or wrong; the message names the key.
CONFIG = 3
#: The data does not fit, and running the same command again fails the same way until it is
#: fixed: a registry file, an input file that cannot be read or changed under an interrupted run,
#: a state that belongs to another database or campaigns, a statement ClickHouse rejects, and a
#: worker stopped by a permanent error (e.g. a command Redis refuses).  A supervisor should not
#: restart on it (systemd: ``RestartPreventExitStatus=4``).
DATA = 4
#: A service is unavailable: ClickHouse, Redis or the Kafka broker down or timing out, the
#: embedded state or ClickHouse held by another process.  The same command later can succeed.
UNAVAILABLE = 5
#: Writing a local file failed (an output, the results, the state): a full or read-only disk, a
#: missing output folder, no permission.  What was stored is consistent; the same command
#: continues once it is fixed.  (An input that cannot be read is ``DATA``.)
IO_ERROR = 6
#: An unexpected error, i.e. a bug: the traceback is printed (BSD sysexits' EX_SOFTWARE, so that
#: it is not mistaken for ``CHECK_FAILED``, the 1 Python itself would exit with).
SOFTWARE = 70
#: Interrupted by Ctrl-C (SIGINT): 128 + the signal number, as shells report it.
INTERRUPTED = 130

#: Every status with its one-line meaning, in order: ``--help`` shows it, a test checks that
#: README's table lists the same numbers.
MEANINGS: dict[int, str] = {
    OK: "success",
    CHECK_FAILED: "done, and the answer is not all good (codes verify: a code is not ok; alerts retry: deliveries left)",
    USAGE: "usage error (options)",
    CONFIG: "configuration error",
    DATA: "data error: registry, input or state does not fit; a worker's permanent error",
    UNAVAILABLE: "a service (ClickHouse, Redis, Kafka, a data folder held by another process) is unavailable",
    IO_ERROR: "a local file cannot be written (disk full, read-only, missing folder, no permission)",
    SOFTWARE: "internal error (a bug; the traceback is printed)",
    INTERRUPTED: "interrupted (Ctrl-C)",
}
