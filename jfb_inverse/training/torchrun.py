"""``python -m torch.distributed.run`` for ``jfb-inverse train --nproc``, without its noise.

torchrun prints a banner when it sets ``OMP_NUM_THREADS``, a warning per worker when it passes a
signal on, and a traceback of its own ``SignalException`` when a run is stopped by one, after
the workers have said (once, on rank 0) where the checkpoint is and how to resume. Here the
thread count is set beforehand (1 per process, torchrun's own default), those routine warnings
are left out (the others, such as a worker killed for not stopping in time, and its errors are
kept) and a signal ends it with exit status 128 + the signal, as a signal ends a one-process run.
The workers get 5 minutes (torchrun: 30 s) to finish their step and checkpoint after a signal
before torchrun kills them: a step of a large configuration can take longer than 30 s on a CPU.

When a worker fails, torchrun's traceback of its own ``ChildFailedError`` and its table of every
rank's exit is replaced by one line naming the rank that failed first (:func:`report_failure`);
that rank's own error is above it, and the ranks that only lost their connection to it say so in
one line each (exit status :data:`PEER_LOST`) instead of a second traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

#: A worker's exit status when it stopped because a collective failed: another rank's process had
#: ended or stopped answering. The launcher names the rank that failed, not this one.
PEER_LOST = 3

#: torchrun's messages that only narrate a normal stop, or that :func:`report_failure` repeats
#: (``LogRecord.msg`` templates, by logger).
ROUTINE = {
    "torch.distributed.elastic.agent.server.api": {"Received %s death signal, shutting down workers"},
    "torch.distributed.elastic.multiprocessing.api": {
        "Sending process %s closing signal %s",
        "failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s",
    },
}


def leave_out_routine_warnings() -> None:
    """Drop :data:`ROUTINE`'s messages from their loggers (levels unchanged: ``LOGLEVEL=INFO`` still
    shows everything else)."""
    for name, templates in ROUTINE.items():
        logging.getLogger(name).addFilter(lambda record, templates=templates: record.msg not in templates)


def report_failure(failures: dict[int, Any]) -> int:
    """Say in one line which rank failed first and how (torchrun's ``ProcessFailure`` by global
    rank); the exit status for the run.

    Left out of the choice: the ranks that torchrun itself stopped with SIGTERM, and those that
    only lost their connection to the failing one (:data:`PEER_LOST`). Nothing is printed when
    the rank said enough itself: a user error (exit status 2, its ``error:`` line) or a stop by a
    signal (128 + the signal, after rank 0 said where the checkpoint is)."""
    causes = {r: f for r, f in failures.items() if f.exitcode not in (PEER_LOST, -signal.SIGTERM)} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    first = causes[rank]
    code = first.exitcode
    status = 128 - code if code < 0 else code
    others = "; the other ranks were stopped" if len(failures) > 1 else ""
    if code < 0:
        memory = " (out of memory?)" if code == -signal.SIGKILL else ""
        say(f"rank {rank} was killed by {first.signal_name()}{memory}{others}")
    elif code == PEER_LOST:
        say(f"the ranks lost their connection to each other (their lines above say how){others}")
    elif code != 2 and code <= 128:
        say(f"rank {rank} failed with exit status {code} (its error is above){others}")
    return status


def say(message: str) -> None:
    """``error: message`` on stderr, as the CLI's own errors are printed."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Run torchrun with ``argv``; the exit status of the run."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    leave_out_routine_warnings()
    try:
        torchrun(argv)
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:
        return report_failure(failed.failures)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
