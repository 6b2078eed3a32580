"""``jfb-inverse train``: train an implicit network on a registered problem (or a custom operator)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from jfb_inverse.cli.common import (
    DeviceOption,
    absolute_paths,
    check_config_file,
    check_writable_folder,
    console,
    debug_enabled,
    err_console,
    error,
    unconverged_note,
    user_errors,
    warn,
)
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

Gradient = Literal["jfb", "jfbk", "implicit", "unrolled"]
Optimizer = Literal["adam", "muon"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: What a checkpoint must hold besides the weights to be resumed (written by the training loop).
RESUME_STATE = ("optimizer", "scheduler", "step", "data", "noise_rng", "torch_rng")


def _overrides(**values: Any) -> dict[str, Any]:
    """Nested overrides from the options that were given (``section__field`` -> section.field)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        section, name = key.split("__")
        out.setdefault(section, {})[name] = value
    return out


def _optimizer_text(name: str, lr: float, muon_lr: float) -> str:
    """The header's optimiser: ``adam (lr 0.002)`` or ``muon (lr 0.005; Adam lr 0.002 for the rest)``."""
    return f"adam (lr {lr:g})" if name == "adam" else f"muon (lr {muon_lr:g}; Adam lr {lr:g} for the rest)"


@user_errors
def train(
    problem: Annotated[str | None, typer.Option(help="Registered problem (see `jfb-inverse problems`).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON file with any definition field.")] = None,
    preset: Annotated[str | None, typer.Option(help="Named preset of the problem, e.g. `full`.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Folder of training images (PNG, JPEG, TIFF, BMP, GIF, WebP, npy).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps (exactly these: lifts a problem's own time budget).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Patches per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (> 0); Adam's under --optimizer muon.")] = None,
    optimizer: Annotated[
        Optimizer | None, typer.Option(help="adam, or muon for the regulariser's hidden layers (Adam for the rest).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output folder (model.pt, problem.toml, history.jsonl, training.png, evaluation.json).")
    ] = Path("runs/latest"),
    device: DeviceOption = "auto",
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    gradient: Annotated[Gradient | None, typer.Option(help="Gradient strategy.")] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop after this many minutes (> 0); the run can be resumed.")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            help="Train for about this many minutes (> 0): the step count (at most --steps) is fitted to "
            "this machine's speed, so the learning-rate schedule ends on time."
        ),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(help="Your forward operator: path/to/ops.py:ClassName or package.module:ClassName."),
    ] = None,
    operator_args: Annotated[
        str | None, typer.Option(help="Constructor keyword arguments of --operator as JSON, e.g. '{\"n\": 3}'.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint (same definition).")
    ] = False,
    trust_operator: Annotated[
        bool, typer.Option("--trust-operator", help="Allow --resume to import the checkpoint's custom operator.")
    ] = False,
    precision: Annotated[
        Precision | None,
        typer.Option(
            help="Autocast precision of the learned regulariser; auto: bf16 when training on a CPU with "
            "native bf16, else fp32."
        ),
    ] = None,
    lipschitz_every: Annotated[
        int | None, typer.Option(min=0, help="Log T's Lipschitz estimate every N steps; warn above 1 (0: off).")
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from these weights (model.pt, run folder or builtin:NAME); the network "
            "shape (arch, width, depth) defaults to theirs."
        ),
    ] = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="Processes for distributed training (launches torchrun; one per GPU).")
    ] = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the trained run already in --out (else it is refused).")
    ] = False,
) -> None:
    """Train an implicit network with JFB (or another gradient strategy) and evaluate it on held-out images."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.problems import config_from_file_or_problem
    from jfb_inverse.problems.config import BUDGET_STEP_CAP
    from jfb_inverse.problems.custom import ensure_trusted
    from jfb_inverse.problems.registry import deep_merge, validate_definition
    from jfb_inverse.training import distributed
    from jfb_inverse.training.checkpoint import load_checkpoint
    from jfb_inverse.training.device import resolve_device
    from jfb_inverse.training.summary import EVALUATION_FILE, last_log
    from jfb_inverse.training.torchrun import PEER_LOST

    if resume and init_from is not None:
        raise UserError("--init-from starts a new run from other weights; drop it to --resume this one")
    if init_from is not None and not resume and _same_file(init_from, out / "model.pt"):
        raise UserError(
            f"--init-from {init_from!r} is this run's own --out, which training overwrites; pick another --out"
        )
    if overwrite and resume:
        raise UserError("--overwrite replaces the run in --out; drop it to --resume that run")
    overrides = _overrides(
        training__steps=steps,
        training__batch_size=batch_size,
        training__lr=lr,
        training__seed=seed,
        training__gradient=gradient,
        training__optimizer=optimizer,
        training__max_minutes=max_minutes,
        training__minutes=minutes,
        training__device=None if device == "auto" else device,
        training__precision=precision,
        training__lipschitz_every=lipschitz_every,
        training__init_from=init_from,
    )
    if resume:
        # Options that would change the run's definition are refused, not ignored. --operator stays
        # allowed: naming the checkpoint's operator again is a way to trust it.
        named = (
            ("problem", problem),
            ("config", config),
            ("preset", preset),
            ("operator_args", operator_args),
        )
        changing = [name for name, value in named if value is not None]
        resumable = ("steps", "max_minutes", "minutes", "device")
        changing += [name for name in overrides.get("training", {}) if name not in resumable]
        _refuse_definition_options_on_resume(changing)
    launcher = nproc > 1 and distributed.world_size_from_env() <= 1
    # torchrun's workers run this command again: rank 0 has checked, and may have written model.pt already.
    worker = distributed.world_size_from_env() > 1 and os.environ.get("RANK", "0") != "0"
    if worker:
        import warnings

        # Every rank resolves the same definition and loads the same data: rank 0 says what they warn of.
        warnings.filterwarnings("ignore", category=UserWarning)
    if not resume and not overwrite and (out / "model.pt").exists() and not worker:
        raise UserError(
            f"--out {str(out)!r} already holds a trained run (model.pt); continue it with --resume, "
            "replace it with --overwrite, or give another --out"
        )
    if data is not None:
        _check_data_folder(data)
        overrides.setdefault("data", {}).update({"source": "folder", "path": str(data)})
    first_step = 0  # where this invocation starts: a resumed run's step
    logged_before = 0  # the last step a record of history.jsonl covers at that start
    if resume:
        if not (out / "model.pt").exists():
            raise UserError(f"nothing to resume: {str(out)!r} holds no model.pt; start the run without --resume")
        payload, cfg = load_checkpoint(out / "model.pt")
        missing = sorted(set(RESUME_STATE) - set(payload))
        if missing:
            raise UserError(
                f"{str(out / 'model.pt')!r} holds weights but no training state ({', '.join(missing)} missing), "
                "so it cannot be resumed; start a new run with another --out"
            )
        cfg = _resumed_data(_resumed_operator(cfg, operator), data, out)
        ensure_trusted(cfg, trust_operator or ([operator] if operator else []))
        # The time budget belongs to one invocation, not to the definition: --max-minutes again if wanted.
        run_control: dict[str, Any] = {"max_minutes": max_minutes}
        if steps is not None:
            run_control["steps"] = steps
        if minutes is not None:
            run_control["minutes"] = minutes
        elif steps is not None and cfg.training.minutes is not None and cfg.training.steps < BUDGET_STEP_CAP:
            # --steps asks for exactly those steps, as in a new run: a budget that capped a step count
            # (deblur's 9-minute guard) gives way. A run planned by its budget alone keeps it.
            run_control["minutes"] = None
        # Validated like any definition (model_copy would not): --max-minutes 0 is refused here too.
        planned = cfg.training.steps
        cfg = validate_definition(deep_merge(cfg.model_dump(), {"training": run_control}))
        first_step = int(payload["step"])
        logged_before = (last_log(out / "history.jsonl", first_step) or {}).get("step", 0)
        if cfg.training.steps <= first_step:
            raise UserError(
                f"the run in --out is at step {first_step}{f' of {planned}' if planned < BUDGET_STEP_CAP else ''}; "
                f"give --steps above {first_step} to train it further, or score it with "
                f"`jfb-inverse evaluate --checkpoint {str(out)!r}`"
            )
    else:
        if config is not None:
            check_config_file(config)
        problem = _custom_operator(problem, operator, operator_args, overrides)
        cfg = absolute_paths(config_from_file_or_problem(problem, config, overrides, preset))
    check_writable_folder(out)
    wanted_device = resolve_device(device if device != "auto" else cfg.training.device)  # refuses cuda without one
    if launcher:
        # The definition, --out and the device were checked above, once, in one line each: torchrun's
        # workers would each print the error inside a multi-screen failure report.
        _check_before_launch(cfg, nproc)
        raise typer.Exit(code=distributed.launch(nproc, _argv_without_nproc()))
    # Imported once the definition has been checked: they load deepinv (3 s here), and a mistyped
    # option or config key should not wait for it.
    from jfb_inverse.evaluation import evaluate
    from jfb_inverse.training.data import evaluation_images
    from jfb_inverse.training.loop import TrainingInterruptedError
    from jfb_inverse.training.loop import train as run_training
    from jfb_inverse.training.report import training_figure

    dev = distributed.init_distributed(wanted_device)
    main_process = distributed.is_main_process()
    if cfg.operator.kind == "custom":
        _check_custom_operator(cfg, dev)
    if cfg.training.precision == "fp16" and dev.type == "cpu" and main_process:
        warn("precision fp16 on a CPU is emulated and several times slower than fp32; use bf16 or auto there")
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=not main_process,
    )
    # Steps whose forward solve stopped at max_iter: warned once when first seen, totalled at the end
    # (a warning per log line buried the progress bar: ~70 lines in the default deblur run).
    not_converged = [0]
    # Under --minutes the total is the fitted step count, known from the first fit on (records carry it);
    # under a problem's own budget it starts at the step count and a fit can lower it.
    capped = not cfg.training.minutes or cfg.training.steps < BUDGET_STEP_CAP
    # The bar's clock starts with the first step (on_start), not while the data are set up (a
    # dead-leaves bank takes seconds): its elapsed time is the training time the summary reports.
    task = progress.add_task("train", total=cfg.training.steps if capped else None, info="", start=False)

    def on_log(record: dict[str, Any]) -> None:
        if not main_process:  # one report per run: rank 0's records cover every rank's shard
            return
        if "planned_steps" in record:
            progress.update(task, total=record["planned_steps"])
        progress.update(
            task,
            info=f"loss {record['loss']:.2e}  psnr {record['psnr']:.2f}  iters {record['iterations']:.1f}",
        )
        if record.get("lipschitz", 0.0) > 1.0:
            warn(
                f"T is not contractive at step {record['step']}: Lipschitz estimate {record['lipschitz']:.2f} > 1 "
                "(JFB's descent guarantee needs < 1); consider model.spectral_norm = true or a lower --lr"
            )
        # An unrolled network runs its K iterations by design: no tolerance to miss.
        if record["not_converged_steps"] and cfg.training.gradient != "unrolled":
            if not not_converged[0]:
                warn(
                    f"{_steps(record['not_converged_steps'])} before step {record['step']} hit max_iter "
                    f"({cfg.solver.max_iter}) before tol ({cfg.solver.tol:g}); the total follows at the end, "
                    "per log interval in history.jsonl (not_converged_steps)"
                )
            not_converged[0] += record["not_converged_steps"]

    def on_start() -> None:
        # Called once the model and the data are set up: bad data fails before the header, and
        # before an --overwrite removes the old run's files. Those go now, not at the new run's
        # first checkpoint: an interrupted --overwrite must not leave the old weights next to the
        # new history (and --resume them).
        if overwrite and main_process:
            for name in ("model.pt", "problem.toml", "history.jsonl", "training.png", EVALUATION_FILE):
                (out / name).unlink(missing_ok=True)
        if resume and main_process:  # it scored the weights this run is about to move on from
            (out / EVALUATION_FILE).unlink(missing_ok=True)
        if not main_process:
            return
        t = cfg.training
        unrolled = t.gradient == "unrolled"  # K iterations from the model's start: no solver, no warm start
        warm = "" if unrolled else ", warm-started"
        reuse = f" (each used {t.batch_reuse}x{warm})" if t.batch_reuse > 1 else ""
        solver = (
            f"{t.unrolled_k} unrolled iterations"
            if unrolled
            else f"solver {cfg.solver.name} (tol {cfg.solver.tol:g}, max {cfg.solver.max_iter})"
        )
        if not t.minutes:
            length = _steps(t.steps)
        elif t.steps >= BUDGET_STEP_CAP:
            length = f"about {t.minutes:g} minutes (steps fitted to this machine's speed, at most {t.steps})"
        else:  # a cap that a fast machine reaches within the budget: deblur's default
            length = f"{t.steps} steps, or as many as fit {t.minutes:g} minutes on this machine if fewer"
        start = f", resuming after step {first_step}" if resume else ""
        if t.init_from and not resume:
            start = f", from the weights of {escape(t.init_from)}"
        console.print(
            f"training [bold]{cfg.problem}[/] on {dev}: {length}{start}, batch {t.batch_size}{reuse}, "
            f"gradient {t.gradient}, {solver}, {_optimizer_text(t.optimizer, t.lr, t.muon_lr)}"
        )
        progress.start_task(task)
        progress.start()

    try:
        result = run_training(
            cfg,
            out,
            dev,
            on_log=on_log,
            on_step=lambda s: progress.update(task, completed=s + 1),
            resume=resume,
            on_start=on_start,
        )
    except TrainingInterruptedError as exc:
        if not main_process:  # every rank stops at the same step; rank 0 says so, once for the run
            raise typer.Exit(code=exc.exit_code) from None
        raise
    except Exception as exc:
        # A collective that failed because another rank failed: that rank prints its error, and a
        # second traceback here would only bury it.
        lost = distributed.lost_a_peer(exc)
        if lost is None or debug_enabled():
            raise
        rank = os.environ.get("RANK", "?")
        error(f"rank {rank}: stopped, another rank's process ended or stopped answering ({lost})")
        raise typer.Exit(code=PEER_LOST) from None
    finally:
        if progress.live.is_started:  # stopping a bar never started prints a blank line before the error
            progress.stop()
        if not main_process:
            distributed.shutdown_distributed()
    if not main_process:
        return
    distributed.shutdown_distributed()
    console.print(f"trained {_steps(result.steps)} in {result.seconds:.0f} s -> {escape(str(out / 'model.pt'))}")
    if result.steps < (result.planned_steps or cfg.training.steps):  # --max-minutes ended it
        of = f" of {result.planned_steps}" if result.planned_steps else ""
        plan_note = " (the plan for --minutes so far)" if cfg.training.minutes and result.planned_steps else ""
        console.print(
            f"stopped by --max-minutes at step {result.steps}{of}{plan_note}; "
            f"continue with: jfb-inverse train --resume --out {escape(str(out))}"
        )
    t = cfg.training
    if t.minutes and t.steps < BUDGET_STEP_CAP and result.steps == result.planned_steps < t.steps:
        console.print(
            f"the {t.minutes:g}-minute budget (training.minutes) fitted {result.steps} of the {t.steps} steps "
            f"to this machine's speed; a new run with --steps {t.steps} (another --out, or --overwrite) trains them all"
        )
    if not_converged[0]:
        # The steps the counted records cover: this invocation's, and on a resume the restored log
        # window's steps since the last record before it (the first record after a resume covers them).
        trained = max(1, result.steps - logged_before)
        warn(
            f"{not_converged[0]} of the {trained} training steps of this run ({not_converged[0] / trained:.0%}) "
            "hit max_iter before tol: their gradient was taken at an approximate fixed point; raise "
            "solver.max_iter if that share is large"
        )
    if result.skipped_steps:
        warn(f"{_steps(result.skipped_steps)} had NaN/Inf loss or gradients and were skipped (learning rate halved)")
    from jfb_inverse.models.build import build_model

    # The curves first: an interrupted evaluation (which `jfb-inverse evaluate` can redo) must not
    # cost the run its figure, which nothing else redraws.
    training_figure(result.history, None, out / "training.png")
    if result.signal_at_end:
        err_console.print(
            f"interrupted by signal {result.signal_at_end} during the last step; the run is complete, the model saved "
            f"in {escape(str(out / 'model.pt'))}; score it with: jfb-inverse evaluate --checkpoint {escape(str(out))}"
        )
        raise typer.Exit(code=128 + result.signal_at_end)
    payload, _ = load_checkpoint(out / "model.pt", map_location=dev)
    model, physics = build_model(cfg, dev)
    model.load_state_dict(payload["state_dict"])
    stop = _StopSignal()
    try:
        with stop:
            ev = evaluate(model, physics, cfg, evaluation_images(cfg.data), seed=0)
    except UserError as exc:
        warn(f"held-out evaluation skipped: {exc}")
        ev = None
    except KeyboardInterrupt:
        # The model is saved: say so, and how to score it, rather than die with a bare "Terminated".
        err_console.print(
            f"interrupted during the held-out evaluation; the trained model is saved in "
            f"{escape(str(out / 'model.pt'))}; score it with: jfb-inverse evaluate --checkpoint {escape(str(out))}"
        )
        raise typer.Exit(code=128 + stop.signum) from None
    training_figure(result.history, ev, out / "training.png")
    if ev is not None:
        from jfb_inverse.measurements import write_json

        # The held-out scores beside the model they belong to (`jfb-inverse info` shows them); the
        # step says which weights were scored.
        settings = {**ev.report["settings"], "checkpoint_step": int(payload["step"])}
        write_json({**ev.report, "settings": settings}, out / EVALUATION_FILE)
        _print_mean(ev.report)
        note = unconverged_note(
            [row["name"] for row in ev.report["images"]], ev.converged, f"jfb-inverse evaluate --checkpoint {out}"
        )
        if note:
            warn(note)


class _StopSignal:
    """Within the block SIGTERM interrupts as Ctrl-C does (KeyboardInterrupt); ``signum`` says which
    of the two stopped it (SIGINT when neither did)."""

    def __init__(self) -> None:
        self.signum = int(signal.SIGINT)
        self._previous: Any = None

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _custom_operator(
    problem: str | None, operator: str | None, operator_args: str | None, overrides: dict[str, Any]
) -> str | None:
    """``--operator`` trains the problem ``custom``: put the operator section into ``overrides``."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.problems.custom import operator_section, parse_operator_args

    if operator is None:
        if operator_args is not None:
            raise UserError("--operator-args needs --operator path/to/ops.py:ClassName")
        return problem
    if problem not in (None, "custom"):
        raise UserError(
            f"--operator trains the problem 'custom'; drop --problem {problem} (put other settings in --config)"
        )
    args = parse_operator_args(operator_args) if operator_args is not None else None
    overrides["operator"] = operator_section(operator, args)
    return "custom"


def _check_custom_operator(cfg: Any, dev: Any) -> None:
    """Import, construct and dot-product test the user's operator now, before any data is loaded."""
    import torch

    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems.custom import ADJOINT_TOL, check_adjoint

    img_size = (cfg.data.channels, cfg.data.patch_size, cfg.data.patch_size)
    # The model's physics cache builds the operator once for the check below and the try-out after it.
    model, cache = build_model(cfg, dev)
    physics = cache.for_image(img_size)  # raises on a failed import or adjointness test
    mismatch = check_adjoint(physics, img_size, dev, name=cfg.operator.target)
    with torch.no_grad():
        y_shape = tuple(physics.A(torch.zeros((1, *img_size), device=dev)).shape[1:])
    console.print(
        f"operator {escape(cfg.operator.target)}: {img_size} image -> {y_shape} measurement, "
        f"adjointness mismatch {mismatch:.1e} (tolerance {ADJOINT_TOL:.0e})"
    )
    # The dot-product test sees one image at the patch size; training and the final evaluation use
    # batches, the consistency step and the held-out size too. Try them now, not after the steps.
    _try_operator_in_the_model(model, cache, (max(2, cfg.training.batch_size), *img_size), "a batch")
    eval_size = (1, cfg.data.channels, cfg.data.eval_size, cfg.data.eval_size)
    _try_operator_in_the_model(model, cache, eval_size, "the held-out images (data.eval_size)")


def _try_operator_in_the_model(model: Any, cache: Any, shape: tuple[int, ...], what: str) -> None:
    """One measurement and one application of ``T`` (start, consistency step, regulariser) for a
    batch of ``shape``; any failure is a one-line :class:`OperatorError`."""
    import torch

    from jfb_inverse.errors import OperatorError
    from jfb_inverse.problems.custom import first_line

    dev, target = cache.device, cache.cfg.operator.target
    try:
        with torch.no_grad():
            physics = cache.for_image(shape[1:])
            y = physics.A(torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(dev))
            fn, start = model.fixed_point_map(y, physics)
            fn(start)
    except Exception as exc:
        # An OperatorError (construction at this size) names itself; anything else by its type.
        reason = str(exc).strip().splitlines()[0] if isinstance(exc, OperatorError) else first_line(exc)
        raise OperatorError(
            f"operator {target!r} fails on {what}, {shape[0]} image(s) of {tuple(shape[1:])}: {reason}; "
            "the operator must work on batches (B, C, H, W) at every image size the run uses "
            "(data.patch_size, data.eval_size)"
        ) from None


def _check_before_launch(cfg: Any, nproc: int) -> None:
    """What each worker would refuse, said once by the launcher: a batch that does not split over
    the processes, and training data without a usable image (the same checks the workers run)."""
    import warnings

    import torch

    from jfb_inverse.training.data import TrainingSource
    from jfb_inverse.training.loop import check_batch_split

    check_batch_split(cfg.training.batch_size, nproc)
    with warnings.catch_warnings():  # rank 0 says those again, once, when it loads the data
        warnings.simplefilter("ignore")
        TrainingSource(cfg.data, cfg.training.batch_size, cfg.training.seed, torch.device("cpu"))


def _resumed_operator(cfg: Any, operator: str | None) -> Any:
    """The resumed run's definition: --operator on --resume may name the run's own operator again (a
    way to trust it) or, when the recorded file is gone, where that file is now (the same class)."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.problems.custom import absolute_target, recorded_file_is_gone, relocate_operator

    if operator is None:
        return cfg
    own = cfg.operator.target if cfg.operator.kind == "custom" else None
    if own is not None and absolute_target(operator) == absolute_target(own):
        return cfg
    if own is not None and recorded_file_is_gone(own):
        return relocate_operator(cfg, operator)
    raise UserError(
        f"--resume continues the run in --out with its own operator ({own or cfg.operator.kind}), so "
        f"--operator {operator} would be ignored; drop it (--trust-operator trusts the run's operator)"
    )


def _resumed_data(cfg: Any, data: Path | None, out: Path) -> Any:
    """The resumed run's definition: --data on --resume may name the run's own folder again or, when
    the recorded folder is gone, where it is now (the run goes on with its images)."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.problems.registry import deep_merge, validate_definition

    own = cfg.data.path if cfg.data.source == "folder" else None
    # A run whose batches are all dead-leaves patches never reads its folder (TrainingSource says so).
    reads = round(cfg.data.dead_leaves * cfg.training.batch_size) < cfg.training.batch_size
    gone = own is not None and reads and not Path(own).is_dir()
    if data is None:
        if gone:
            raise UserError(
                f"the run's training folder {own!r} is gone; if it moved, give its new place: "
                f"jfb-inverse train --resume --out {str(out)!r} --data NEW/FOLDER"
            )
        return cfg
    if own is not None and data.resolve() == Path(own).resolve():
        return cfg
    if gone:
        return validate_definition(deep_merge(cfg.model_dump(), {"data": {"path": str(data.resolve())}}))
    raise UserError(
        f"--resume continues the run in --out on its own data ({own or cfg.data.source}), so --data {str(data)!r} "
        "would be ignored; drop it, or start a new run with another --out (--init-from its model.pt to fine-tune)"
    )


def _refuse_definition_options_on_resume(option_names: list[str]) -> None:
    """--resume continues the run's own definition: options that would change it are refused, not ignored."""
    from jfb_inverse.errors import UserError

    if option_names:
        names = ", ".join(f"--{name.replace('_', '-')}" for name in option_names)
        them = "them" if len(option_names) > 1 else "it"
        raise UserError(
            f"--resume continues the run in --out with its own definition, so {names} would be "
            f"ignored; drop {them} (--steps, --max-minutes, --minutes and --device may change), "
            "or start a new run with another --out"
        )


def _steps(n: int) -> str:
    """``1 step``, ``2 steps``."""
    return f"{n} step" if n == 1 else f"{n} steps"


def _check_data_folder(data: Path) -> None:
    """--data names a folder holding images: checked before anything is printed or written."""
    from jfb_inverse.datasets.images import image_files

    from jfb_inverse.errors import UserError

    try:
        image_files(data)
    except (OSError, UserError) as exc:
        reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) else str(exc)
        raise UserError(f"--data: {reason}; give the folder that holds your training images") from None


def _argv_without_nproc() -> list[str]:
    """This command's arguments after ``train``, without ``--nproc`` (torchrun starts the workers)."""
    import sys

    args = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else sys.argv[1:]
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def _same_file(source: str, target: Path) -> bool:
    """Whether the checkpoint ``source`` names (a path or run folder; never a builtin) is ``target``."""
    path = Path(source)  # a run folder that does not exist yet counts too
    candidates = {path.resolve(), (path / "model.pt").resolve()}
    return not source.startswith("builtin:") and target.resolve() in candidates


def _print_mean(report: dict[str, Any]) -> None:
    table = Table("method", "mean PSNR (dB)", "mean SSIM", title="held-out images")
    for method, value in report["mean"]["psnr"].items():
        table.add_row(method, f"{value:.2f}", f"{report['mean']['ssim'][method]:.4f}")
    console.print(table)
