"""``python -m torch.distributed.run`` for ``jfb-inverse train --nproc``, without its noise.

torchrun prints a banner when it sets ``OMP_NUM_THREADS``, a warning per worker when it passes a
signal on, and a traceback of its own ``SignalException`` when a run is stopped by one, after
the workers have said (once, on rank 0) where the checkpoint is and how to resume. Here the
thread count is set beforehand (1 per process, torchrun's own default), those routine warnings
are left out (the others, such as a worker killed for not stopping in time, and its errors are
kept) and a signal ends it with exit status 128 + the signal, as a signal ends a one-process run.
The workers get 5 minutes (torchrun: 30 s) to finish their step and checkpoint after a signal
before torchrun kills them: a step of a large configuration can take longer than 30 s on a CPU.
"""

from __future__ import annotations

import logging
import os
import sys

#: torchrun's warnings that only narrate a normal stop (``LogRecord.msg`` templates, by logger).
ROUTINE = {
    "torch.distributed.elastic.agent.server.api": "Received %s death signal, shutting down workers",
    "torch.distributed.elastic.multiprocessing.api": "Sending process %s closing signal %s",
}


def leave_out_routine_warnings() -> None:
    """Drop :data:`ROUTINE`'s messages from their loggers (levels unchanged: ``LOGLEVEL=INFO`` still
    shows everything else)."""
    for name, template in ROUTINE.items():
        logging.getLogger(name).addFilter(lambda record, template=template: record.msg != template)


def main(argv: list[str]) -> int:
    """Run torchrun with ``argv``; the exit status of the run."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    leave_out_routine_warnings()
    try:
        torchrun(argv)
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
