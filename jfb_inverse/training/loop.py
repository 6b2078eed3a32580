"""The training loop: patches -> simulated measurements -> implicit reconstruction -> MSE, with JFB.

Writes into the output folder (rank 0 only under torch.distributed): ``model.pt`` (weights,
resolved definition, full training state), ``problem.toml``, ``history.jsonl`` (one JSON line per
logged step). Checkpoints are written atomically every ``checkpoint_every`` steps, at the end,
and when SIGINT/SIGTERM arrives; ``resume=True`` continues from ``model.pt`` with the same
optimiser, scheduler, data stream and RNG states, so an interrupted run ends with the same
weights as an uninterrupted one (bitwise on CPU). With ``training.minutes`` the step count is
fitted to the run's measured speed (:mod:`jfb_inverse.training.budget`) and the learning-rate
schedule follows the plan, so it ends when the time does.

Distributed (``torchrun``): every rank draws the same global batch from the same seeded stream
and trains on its own slice of it, gradients are averaged by DistributedDataParallel. The
fixed-point solve runs without autograd, so DDP sees exactly one tracked forward per step, and
ranks that need different iteration counts never wait on each other inside the solve.

Non-finite loss or gradients: the step is skipped (no update), the learning rate is halved, and
after ``MAX_BAD_STEPS`` consecutive bad steps training stops with :class:`TrainingDivergedError`; the
last checkpoint on disk is left intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F

from jfb_inverse.consistency import make_step
from jfb_inverse.errors import ConfigError, UserError
from jfb_inverse.implicit import lipschitz_estimate
from jfb_inverse.metrics import psnr
from jfb_inverse.models.build import build_model
from jfb_inverse.models.precision import effective_precision
from jfb_inverse.problems.config import BUDGET_STEP_CAP, ProblemConfig
from jfb_inverse.problems.noise import simulate
from jfb_inverse.problems.operators import with_embedded_kernel
from jfb_inverse.training.budget import StepPlan
from jfb_inverse.training.checkpoint import load_checkpoint, load_initial_weights, save_checkpoint
from jfb_inverse.training.data import TrainingSource
from jfb_inverse.training.optim import build_optimizer
from jfb_inverse.training.reuse import BatchPool

LogCallback = Callable[[dict[str, Any]], None]
MAX_BAD_STEPS = 5


class TrainingDivergedError(UserError):
    """Loss or gradients stayed NaN/Inf despite lowering the learning rate."""


class TrainingInterruptedError(UserError):
    """SIGINT/SIGTERM: a checkpoint was written; ``--resume`` continues. Exit code 128 + the signal's
    number (130, 143), as a shell reports a process the signal ended."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    steps: int
    seconds: float
    history: list[dict[str, Any]]
    skipped_steps: int = 0
    #: The steps the run planned: ``training.steps``, or the count fitted to ``training.minutes``
    #: (None: stopped before the first fit). ``steps`` below it: ``max_minutes`` stopped the run.
    planned_steps: int | None = None
    #: A SIGINT/SIGTERM that came during the last step (0: none): the run is complete all the same,
    #: and the caller should stop after saving what needs no more work (the figure), not evaluate.
    signal_at_end: int = 0


def _lr_lambda(total: int | Callable[[], int], warmup: int = 20) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 5% of the peak learning rate at step ``total`` (a
    number, or a function giving the current plan: a time budget refits it during the run). A
    plan of ``warmup`` steps or fewer ends inside the warm-up (a smoke test's run, not a model)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        steps = total() if callable(total) else total
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _reduce_record(record: dict[str, Any], not_converged: list[float], world: int, device: torch.device) -> list[float]:
    """A log record over every rank's shard, in place: the ranks' mean loss, PSNR, iterations and
    converged share and their largest residual. Returns the window's per-step not-converged flags
    (``not_converged``: this rank's) with a step flagged when any rank's solve was not."""
    keys = ("loss", "psnr", "iterations", "converged")
    means = torch.tensor([record[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(means)
    for key, value in zip(keys, (means / world).tolist(), strict=True):
        record[key] = value
    largest = torch.tensor([record["residual"], *not_converged], dtype=torch.float64, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    record["residual"], *flags = largest.tolist()
    return flags


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """``null`` for a non-finite number: ``NaN`` is not JSON, and strict readers refuse the line."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _merge_window(window: list[dict[str, float]], world: int, device: torch.device) -> None:
    """Replace each rank's entries of a partial log window by the ranks' means, in place, before a
    checkpoint saves rank 0's: a resumed run's first record then averages every rank's shard over
    the steps before the stop as well (each rank reloads the saved window; rank 0's alone counted
    its shard twice). A later record averages the same merged entries on every rank: unchanged.
    The residual is already the batch's largest per step (reduced with the stop flags)."""
    keys = ("loss", "psnr", "iterations", "converged", "skipped")
    values = torch.tensor([[w[k] for k in keys] for w in window], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    for entry, row in zip(window, (values / world).tolist(), strict=True):
        entry.update(zip(keys, row, strict=True))


def _restore_noise_stream(gen: torch.Generator, state: Tensor, fallback_seed: int) -> None:
    """Continue the measurement-noise stream saved in a checkpoint. A state saved by a generator on
    another kind of device (a CUDA run resumed on the CPU, or the reverse) does not fit this one:
    the stream then restarts from a seed of the step, with a warning (the run goes on; bitwise
    continuation across devices was never possible, their arithmetic differs)."""
    if state.numel() == gen.get_state().numel():
        gen.set_state(state)
        return
    gen.manual_seed(fallback_seed)
    warnings.warn(
        f"resuming on {gen.device.type}, a device of another kind than the one the run was saved on: the "
        "measurement-noise stream restarts from a seed of the step (training goes on, not bit-identically)",
        RuntimeWarning,
        stacklevel=3,
    )


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, int]]:
    """Record SIGINT/SIGTERM instead of dying mid-step; the loop checkpoints and stops."""
    received: dict[str, int] = {}
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        received["signal"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _all_finite(tensors: Iterator[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def lipschitz_at_fixed_point(model: torch.nn.Module, y: torch.Tensor, physics: Any, n_iter: int = 10) -> float:
    """Lipschitz estimate of the model's ``T`` at the fixed point of the measurements ``y`` (largest
    over the batch). Uses no global RNG state, so monitoring never changes the training stream.

    Measured on the fp32 map (whatever ``precision`` the model trains in) in eval mode: bf16's
    rounding noise would inflate the estimate (1.09 against 1.00 seen with the old double-VJP
    estimate; 7.8 against 1.04 with the central difference that :func:`lipschitz_estimate` uses).
    Without the evaluation-time averaging of ``D`` (``equivariance``), though: the monitor is about
    the map that JFB trains, and averaging can only lower the Jacobian's norm.
    """
    was_training = model.training
    equivariance = getattr(model, "equivariance", None)
    precision = getattr(model, "precision", None)
    model.eval()
    if equivariance is not None:
        model.equivariance = "none"
    if precision is not None:
        model.precision = "fp32"
    try:
        with torch.no_grad():
            fn, u0 = model.fixed_point_map(y, physics)
            u, _ = model.solver.solve(fn, u0)
        return float(lipschitz_estimate(fn, u, n_iter=n_iter).max())
    finally:
        model.train(was_training)
        if equivariance is not None:
            model.equivariance = equivariance
        if precision is not None:
            model.precision = precision


#: What a resume may change: how long it trains and where.
RESUMABLE_CHANGES = ("steps", "max_minutes", "minutes", "device")


def _operator_moved(cfg: ProblemConfig, stored: ProblemConfig) -> bool:
    """Whether ``cfg`` reads the stored run's custom operator class from another file because the
    recorded one is gone (``--resume --operator NEW/PATH.py:Class``)."""
    from jfb_inverse.problems.custom import recorded_file_is_gone

    a, b = cfg.operator, stored.operator
    return (
        a.kind == b.kind == "custom"
        and a.target.rpartition(":")[2] == b.target.rpartition(":")[2]
        and recorded_file_is_gone(b.target)
    )


def check_batch_split(batch_size: int, world: int) -> None:
    """Each of ``world`` processes trains on an equal slice of the batch."""
    if batch_size % world:
        raise UserError(f"batch size {batch_size} does not split over {world} processes; use a multiple of {world}")


def _check_same_definition(cfg: ProblemConfig, stored: ProblemConfig) -> None:
    """A resume continues the stored run: any other change to its definition is refused, named."""

    def flat(values: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(values, dict):
            return {k: v for key, item in values.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix[:-1]: values}

    new, old = flat(cfg.model_dump(mode="json")), flat(stored.model_dump(mode="json"))
    allowed = {f"training.{name}" for name in RESUMABLE_CHANGES}
    if _operator_moved(cfg, stored):  # the same class, read from where its file is now
        allowed.add("operator.target")
    if cfg.data.source == stored.data.source == "folder" and not Path(stored.data.path or "").is_dir():
        allowed.add("data.path")  # the training folder moved (``--resume --data NEW``)
    changed = [key for key in sorted(set(new) | set(old)) if new.get(key) != old.get(key) and key not in allowed]
    if changed:
        key = changed[0]
        raise UserError(
            f"resume: {key} is {new.get(key)!r} here but {old.get(key)!r} in the stored run"
            f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; resume with the stored definition "
            "(problem.toml) or start a new run"
        )


def train(
    cfg: ProblemConfig,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    on_log: LogCallback | None = None,
    on_step: Callable[[int], None] | None = None,
    resume: bool = False,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Train the definition's implicit network with its gradient strategy; see the module docstring.

    ``on_start`` is called once the model, the data and the optimiser are set up (so bad data has
    failed by then) and before anything is written to ``out_dir``.
    """
    out = Path(out_dir)
    rank, world = _rank_and_world()
    is_main = rank == 0
    device = torch.device(device)
    t = cfg.training
    check_batch_split(t.batch_size, world)
    if cfg.data.source == "folder" and cfg.data.path and Path(cfg.data.path).resolve() == out.resolve():
        # The run writes training.png there (the CLI's figure), which a later run or a resume would
        # read as a training image, and which would replace a user's image of that name.
        raise UserError(f"the output folder {str(out)!r} is the training-data folder (--data); give another --out")
    # A kernel file's numbers go into the saved definition: the run's checkpoints need no file.
    cfg = with_embedded_kernel(cfg)
    torch.manual_seed(t.seed)
    model, physics_cache = build_model(cfg, device)
    if t.init_from is not None and not resume:
        load_initial_weights(model, t.init_from, cfg.model.step, device)
    model.train()
    source = TrainingSource(cfg.data, t.batch_size, t.seed, device)
    local = slice(rank * t.batch_size // world, (rank + 1) * t.batch_size // world)
    pool = BatchPool(t.batch_reuse, t.reuse_gap, local)
    img_size = (cfg.data.channels, cfg.data.patch_size, cfg.data.patch_size)
    try:
        physics = physics_cache.for_image(img_size)
    except ConfigError as exc:  # a size the operator refuses: the image here is a training patch
        raise ConfigError(f"training patches: {exc}; or change data.patch_size ({cfg.data.patch_size})") from None
    try:  # and the held-out size, which the final evaluation would only meet after every step
        physics_cache.for_image((cfg.data.channels, cfg.data.eval_size, cfg.data.eval_size))
    except ConfigError as exc:
        raise ConfigError(f"held-out images: {exc}; or change data.eval_size ({cfg.data.eval_size})") from None
    try:  # a step that does not fit the operator (a custom one) fails here, before anything is written
        make_step(cfg.model.step, physics, img_size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    noise_gen = torch.Generator(device=device).manual_seed(t.seed + 1)
    try:
        optimizer = build_optimizer(model, t.optimizer, t.lr, t.muon_lr)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    budget = None if t.minutes is None else 60 * t.minutes
    plan = StepPlan(cap=t.steps, seconds=budget)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(lambda: plan.planned))
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    first_step = 0
    elapsed_before = 0.0
    window_state: list[dict[str, float]] = []
    lipschitz_state: float | None = None
    guard_state = (0, 0)
    history: list[dict[str, Any]] = []
    history_path = out / "history.jsonl"
    if resume:
        payload, stored = load_checkpoint(out / "model.pt", map_location=device)
        _check_same_definition(cfg, stored)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        source.load_state_dict(payload["data"])
        if payload.get("batch_pool") is not None:  # None: a completed run, or a checkpoint from before reuse
            pool.load_state_dict(payload["batch_pool"])
        first_step = int(payload["step"])
        _restore_noise_stream(noise_gen, payload["noise_rng"].cpu(), t.seed + 1 + first_step)
        torch.set_rng_state(payload["torch_rng"].cpu())
        elapsed_before = float(payload.get("seconds", 0.0))
        window_state = json.loads(payload.get("log_window", "[]"))
        lipschitz_state = payload.get("lipschitz_pending")
        # fp16's loss scale and the NaN guard's counters carry on too (absent in older checkpoints).
        if "grad_scaler" in payload:
            scaler.load_state_dict(payload["grad_scaler"])
        guard_state = (int(payload.get("skipped_steps", 0)), int(payload.get("bad_in_a_row", 0)))
        # Absent before training.minutes: the stored run planned its step count, without a budget.
        plan.load_state_dict(payload.get("step_plan") or StepPlan(cap=stored.training.steps).state_dict())
        same_budget = plan.seconds == budget
        plan.rebudget(budget, t.steps, first_step, elapsed_before)
        if budget is not None and first_step >= plan.planned:  # rebudget left no step to plan
            more = "" if t.steps >= BUDGET_STEP_CAP else f" (or --steps above {first_step}: exactly that many steps)"
            used = elapsed_before / 60
            # Room for one more step at the run's average speed, rounded up: that value must be enough.
            least = math.ceil((elapsed_before + elapsed_before / max(1, first_step)) / 60 * 100) / 100
            why = (
                f"has done the {first_step} steps its {t.minutes:g}-minute budget planned (in {used:.2f} minutes)"
                if same_budget
                else f"has trained {used:.2f} minutes (step {first_step}), which leaves no step in a "
                f"{t.minutes:g}-minute budget"
            )
            raise UserError(
                f"the run in {str(out)!r} {why}; to train it further, give --minutes {least:g} or more{more}"
            )
        # The learning rate of the next step under this run's schedule: a resume with more --steps
        # stretches the schedule, and the optimiser's stored lr is the old schedule's.
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(scheduler.last_epoch)
        if history_path.is_file():
            history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
            history = [h for h in history if h["step"] <= first_step]
    if on_start is not None:
        on_start()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        history_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    start = time.perf_counter()
    # Steps since the last log line: saved in checkpoints so a resumed run logs the same averages.
    window: list[dict[str, float]] = window_state
    skipped, bad_in_a_row = guard_state
    # The largest contractivity estimate since the last record (NaN sticks), logged with the next one:
    # with lipschitz_every < log_every several estimates share a record, and none above 1 may be lost.
    lipschitz: float | None = lipschitz_state
    step = first_step - 1
    last = False

    def seconds() -> float:
        return elapsed_before + time.perf_counter() - start

    saved_step = [first_step]  # the step of the checkpoint on disk (0: none yet), for the divergence message

    def checkpoint(final: bool = False) -> None:
        # Every rank takes part: the pool gathers the ranks' warm starts. A run that did all its
        # steps keeps no pool (a resume with more steps draws fresh batches), so model.pt stays small;
        # one stopped early (time budget, signal) keeps it, to resume exactly.
        done = final and step + 1 >= plan.planned
        pool_state = None if done or t.batch_reuse == 1 else pool.state_dict(world)
        if world > 1 and window:
            _merge_window(window, world, device)  # rank 0 saves it, and every rank resumes from it
        if not is_main:
            return
        if not _all_finite(model.state_dict().values()):
            return  # never overwrite a good checkpoint with a broken model
        save_checkpoint(
            out / "model.pt",
            cfg,
            model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            step=step + 1,
            data=source.state_dict(),
            batch_pool=pool_state,
            noise_rng=noise_gen.get_state(),
            torch_rng=torch.get_rng_state(),
            seconds=seconds(),
            log_window=json.dumps(window),
            lipschitz_pending=lipschitz,
            grad_scaler=scaler.state_dict(),
            step_plan=plan.state_dict(),
            skipped_steps=skipped,
            bad_in_a_row=bad_in_a_row,
            finished=final,
            # What `auto` meant where the run last trained: info shows it (bf16 or fp32 by the CPU).
            ran_on={"device": device.type, "precision": effective_precision(t.precision, device, training=True)},
        )
        saved_step[0] = step + 1

    def draw() -> tuple[Tensor, Tensor]:
        x_all = source.sample()
        with torch.no_grad():
            return x_all, simulate(x_all, physics, cfg.noise, noise_gen)

    signum = 0
    with _stop_on_signals() as received:
        for step in range(first_step, t.steps):
            x, y, warm_start = pool.batch(step, draw)
            # An unrolled network is trained for its K iterations from the model's own start.
            x_hat = ddp_model(y, physics, u0=None if t.gradient == "unrolled" else warm_start)
            loss = F.mse_loss(x_hat, x)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            loss_finite = bool(torch.isfinite(loss))
            finite = loss_finite and _all_finite(p.grad for p in model.parameters() if p.grad is not None)
            if world > 1:  # every rank must take the same decision
                flags = torch.tensor([float(finite), float(loss_finite)], device=device)
                dist.all_reduce(flags, op=dist.ReduceOp.MIN)
                finite, loss_finite = (bool(v > 0) for v in flags.tolist())
            if finite or (t.precision == "fp16" and loss_finite):
                # fp16: the scaler skips steps with inf gradients itself and lowers its scale; a NaN
                # loss is no overflow, and goes to the guard below as in the other precisions.
                scaler.step(optimizer)
                scaler.update()
                bad_in_a_row = 0
                pool.remember(x_hat)
            else:
                pool.discard()  # a NaN start would spoil the batch's later uses: draw afresh instead
                skipped += 1
                bad_in_a_row += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
                if bad_in_a_row >= MAX_BAD_STEPS:
                    raise TrainingDivergedError(
                        f"training diverged: loss or gradients were NaN/Inf for {bad_in_a_row} steps in a row at "
                        f"step {step + 1} even after halving the learning rate each time; lower --lr, use a smaller "
                        "model.eta_init, or enable model.spectral_norm"
                        + (
                            f" (the checkpoint of step {saved_step[0]} is intact)"
                            if saved_step[0]
                            else " (no checkpoint had been written yet)"
                        )
                    )
            scheduler.step()
            stats = model.last_stats
            assert stats is not None
            window.append(
                {
                    "loss": loss.item() if finite else float("nan"),
                    "psnr": float(psnr(x_hat.detach().clamp(0, 1), x).mean()),
                    "iterations": float(stats.iterations.float().mean()),
                    "residual": float(stats.residual.max()),
                    "converged": float(stats.converged.float().mean()),
                    "skipped": float(not finite),
                }
            )
            if t.lipschitz_every and (step + 1) % t.lipschitz_every == 0 and is_main:
                estimate = lipschitz_at_fixed_point(model, y[:1], physics)
                if lipschitz is None or not estimate <= lipschitz:
                    lipschitz = estimate
            if on_step is not None:
                on_step(step)
            # max_minutes is this invocation's budget (a resumed run gets --max-minutes again): the
            # run stops resumable. minutes is the run's: the plan fits the steps to it, and at its
            # end the run is over whatever the plan said (a fit can overshoot).
            elapsed = seconds()
            plan.update(step + 1, elapsed)
            out_of_time = t.max_minutes is not None and time.perf_counter() - start > 60 * t.max_minutes
            if budget is not None and elapsed > budget:
                plan.planned = step + 1
            signum = int(received.get("signal", 0))
            if world > 1:  # every rank stops at the same step, as for signals: one going on alone would hang
                # float64: a plan of up to 2^53 steps survives the reduction exactly (float32: 2^24)
                # The step's residual too: the whole batch's largest, as one process records it.
                flags = torch.tensor(
                    [float(out_of_time), float(signum), -float(plan.planned), window[-1]["residual"]],
                    dtype=torch.float64,
                    device=device,
                )
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                out_of_time, signum, plan.planned = bool(flags[0] > 0), int(flags[1]), int(-flags[2])
                window[-1]["residual"] = float(flags[3])
            last = step + 1 >= plan.planned
            # A run that ends (last step or time budget) logs the steps since its last record too.
            if (step + 1) % t.log_every == 0 or last or (out_of_time and window):
                record: dict[str, Any] = {"step": step + 1, "seconds": round(seconds(), 3)}
                for key in ("loss", "psnr", "iterations", "residual", "converged"):
                    # Over the steps that were not skipped (NaN loss): NaN only if every one was.
                    values = [w[key] for w in window if math.isfinite(w[key])]
                    record[key] = sum(values) / len(values) if values else math.nan
                not_converged = [float(w["converged"] < 1) for w in window]
                if world > 1:  # the whole batch's record, not rank 0's shard
                    not_converged = _reduce_record(record, not_converged, world, device)
                # training.lr's schedule (Adam's group, the last one); Muon's group first, under muon.
                *muon_lr, record["lr"] = scheduler.get_last_lr()
                if muon_lr:
                    record["muon_lr"] = muon_lr[0]
                if plan.fitted or (budget is not None and last):  # not the cap before the first fit
                    record["planned_steps"] = plan.planned
                record["eta"] = float(model.eta.detach())
                record["not_converged_steps"] = int(sum(not_converged))
                record["skipped_steps"] = int(sum(w["skipped"] for w in window))
                if lipschitz is not None:
                    record["lipschitz"] = lipschitz
                    lipschitz = None
                window.clear()
                history.append(record)
                if is_main:
                    with history_path.open("a") as fh:
                        fh.write(json.dumps(_json_safe(record)) + "\n")
                if on_log is not None:
                    on_log(record)
            if signum and not last:  # at the last step there is nothing left to resume: finish the run
                checkpoint()
                raise TrainingInterruptedError(
                    f"interrupted by signal {signum} after step {step + 1}; checkpoint written to "
                    f"{out / 'model.pt'}; continue with --resume",
                    signum,
                )
            if (step + 1) % t.checkpoint_every == 0 and not last:
                checkpoint()
            if out_of_time or last:
                break
    checkpoint(final=True)
    # A budgeted run stopped (max_minutes) before its first fit has no plan yet, only the cap.
    planned = plan.planned if budget is None or plan.fitted or last else None
    return TrainResult(out, step + 1, seconds(), history, skipped, planned, signal_at_end=signum)
