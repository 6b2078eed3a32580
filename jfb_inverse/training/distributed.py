"""torch.distributed plumbing for ``jfb-inverse train``: start-up under torchrun, and the launcher.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each process joins the process group
(NCCL on CUDA, gloo on CPU) and takes the device of its ``LOCAL_RANK``. ``jfb-inverse train
--nproc N`` re-launches itself through ``torch.distributed.run`` (its noise left out by
:mod:`jfb_inverse.training.torchrun`), which also handles multi-node
rendezvous (``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``) and stops every worker as soon as
one fails, so a failing rank never leaves the others hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from jfb_inverse.errors import UserError

# Collectives that wait longer than this raise instead of hanging forever (e.g. a dead peer).
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def world_size_from_env() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; return this rank's device."""
    if world_size_from_env() <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserError(f"rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); use fewer processes")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return device


def shutdown_distributed() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the only process that prints summaries and writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# How gloo and NCCL word a collective whose peer has gone or stopped answering. Matched on the
# message, not on the class: a DistError is also this rank's own NCCL or CUDA failure (out of
# memory, say), which must keep its traceback.
PEER_GONE = (
    "Connection closed by peer",  # gloo
    "Connection reset by peer",
    "Broken pipe",
    "Timed out waiting",  # gloo, a peer that hangs past the collective timeout
    "Connection closed by remote peer",  # NCCL
    "remote process exited",
    "NCCL communicator was aborted",
)


def lost_a_peer(exc: BaseException) -> str | None:
    """When ``exc`` is a collective that failed because another rank's process ended or stopped
    answering (not this rank's own error), its message in one short line; otherwise None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc)
    if not (isinstance(exc, RuntimeError) and any(s in text for s in PEER_GONE)):
        return None
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if line.startswith("[") and "] " in line:  # gloo's "[path/pair.cc:561] Connection closed by peer ..."
        line = line.split("] ", 1)[1]
    return line.split(". ")[0][:120]  # its first sentence: the rest is advice about the other rank's log


def launch(nproc: int, train_args: list[str], torchrun_args: list[str] | None = None) -> int:
    """Run ``jfb-inverse train TRAIN_ARGS`` on ``nproc`` processes via torch.distributed.run; its
    exit status (128 + the signal when a signal stopped it; SIGHUP is passed on as SIGTERM, 143).

    torchrun runs in a session of its own, and the first SIGINT, SIGTERM, SIGHUP or SIGQUIT that
    reaches this process is passed on to it (SIGHUP as SIGTERM, which the workers checkpoint on),
    so it gets one whether it came from the terminal or to this process alone (``kill``, ``docker
    stop``, a pipeline's ``terminate()``); this process then waits until the workers have
    checkpointed. Later signals are not passed on: a second one used to interrupt torchrun's own
    shutdown, and this process returned while the workers were still training."""
    cmd = [
        sys.executable,
        "-m",
        "jfb_inverse.training.torchrun",
        f"--nproc-per-node={nproc}",
        *(torchrun_args or ["--standalone"]),
        "-m",
        "jfb_inverse.cli",
        "train",
        *train_args,
    ]
    received: list[int] = []
    proc: subprocess.Popen | None = None
    passed = False

    def pass_on() -> None:
        nonlocal passed
        if received and proc is not None and not passed:
            passed = True
            proc.send_signal(signal.SIGTERM if received[0] == signal.SIGHUP else received[0])

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if len(received) == 2:
            print("stopping: the workers checkpoint after their current step", file=sys.stderr, flush=True)
        pass_on()

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    main_thread = threading.current_thread() is threading.main_thread()  # handlers live there only
    # Installed before torchrun starts: a signal in between is passed on as soon as it has.
    previous = {sig: signal.signal(sig, forward) for sig in stop_signals} if main_thread else {}
    try:
        proc = subprocess.Popen(cmd, start_new_session=True)
        pass_on()
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
