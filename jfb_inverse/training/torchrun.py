"""``python -m torch.distributed.run`` for ``jfb-inverse train --nproc``, without its noise.

torchrun prints a banner when it sets ``OMP_NUM_THREADS``, a warning per worker when it passes a
signal on, and a traceback of its own ``SignalException`` when a run is stopped by one, after
the workers have said (once, on rank 0) where the checkpoint is and how to resume. Here the
thread count is set beforehand (1 per process, torchrun's own default), its warnings are left
out (its errors, such as a failed worker's, are kept) and a signal ends it with exit status
128 + the signal, as a signal ends a one-process run.
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_elastic_loggers() -> None:
    """Raise torch.distributed's loggers to ERROR: those its modules created with a level of their
    own at import, and the parent of those that inherit one."""
    for name in [*logging.Logger.manager.loggerDict, "torch.distributed"]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str]) -> int:
    """Run torchrun with ``argv``; the exit status of the run."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    quiet_elastic_loggers()
    try:
        torchrun(argv)
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
