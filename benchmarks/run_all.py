"""The standard benchmark set: items 1-6 of issue 5, the allocator check and the hot-path profile.

Writes one JSON + PNG per benchmark under the output folder, then ``summary.json`` and
``summary.md`` (the headline table, measured values against the targets).

- ``step``: training-step time and counts (training_step.py), per problem;
- ``memory``: peak training memory against K (memory.py), per problem;
- ``solver``: Picard vs Anderson on the trained deblur model (solver_convergence.py);
- ``quality``: held-out PSNR against time, JFB vs ImplicitDiff (time_to_quality.py);
- ``deepinv``: ours vs deepinv's DEQ-PGD with JFB (vs_deepinv.py);
- ``malloc``: glibc allocator thresholds (malloc_env.py, CPU only);
- ``hot_path``: profiles, solver overhead, grad mode, regulariser variants (profile_hot_path.py);
- ``kernels``: the solvers' own kernels and time per iteration on a one-kernel map (solver_kernels.py).

Problems: ``deblur`` always; ``ct`` for items 1-3 when registered (skipped with a note otherwise).
``--quick``: tiny sizes, few repeats, CT only for the step benchmark, no torch.compile: a smoke
run of a few minutes.

    python benchmarks/run_all.py [--device cpu|cuda] [--quick] [--only step,memory] [--problems deblur,ct]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time
import traceback
from typing import Any

import benchlib
import torch

ITEMS = ("step", "memory", "solver", "quality", "deepinv", "malloc", "hot_path", "kernels")
KEYS = ("machine", "options", "results", "skipped", "errors", "table", "seconds")


def run_all(
    out: Path = benchlib.DEFAULT_OUT,
    device: str = "cpu",
    quick: bool = False,
    only: list[str] | None = None,
    problems: list[str] | None = None,
    checkpoint: str | None = None,
    threads: int = 1,
    malloc_tuning: bool = True,
    log: Any = print,
    repeats: int | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Run the standard set and write every JSON/PNG plus ``summary.json`` and ``summary.md``.

    ``repeats`` overrides the timed repeats of the step, solver and deepinv benchmarks (and the rounds
    of the allocator check); ``budget_s`` the time-to-quality budget per training.
    """
    import malloc_env
    import memory
    import profile_hot_path
    import solver_convergence
    import solver_kernels
    import time_to_quality
    import training_step
    import vs_deepinv

    from jfb_inverse.runtime import tune_malloc

    start = time.perf_counter()
    out = Path(out)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is available; use --device cpu")
    torch.set_num_threads(max(1, threads))
    if malloc_tuning:
        tune_malloc()
    info = benchlib.machine_info(dev)
    if only is not None and not only:
        raise SystemExit(f"error: --only names no benchmark; give some of {', '.join(ITEMS)}, or leave it out for all")
    if problems is not None and not problems:
        raise SystemExit("error: --problems names no problem; give some of deblur, ct, or leave it out for both")
    items = list(only or ITEMS)
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        raise SystemExit(f"error: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ITEMS)}")
    if budget_s is not None and "quality" not in items:
        raise SystemExit("error: --budget is the quality benchmark's, which --only leaves out; add quality or drop it")
    if checkpoint is not None and not ({"step", "solver"} & set(items) and "deblur" in (problems or ["deblur"])):
        raise SystemExit(
            "error: --checkpoint is the deblur model of the step and solver benchmarks, which --only or --problems "
            "leaves out"
        )
    registered = benchlib.available_problems()
    wanted = problems or ["deblur", "ct"]
    unknown_problems = [p for p in wanted if p not in registered]
    if problems and unknown_problems:  # asked for by name: a typo must not run nothing and exit 0
        raise SystemExit(
            f"error: unknown problem(s) {', '.join(unknown_problems)} for --problems; "
            f"registered: {', '.join(registered)}"
        )
    for p in wanted:
        if p in registered:
            try:  # a problem that needs more than its name (custom: an operator file) fails now, not mid-run
                from jfb_inverse.problems.operators import build_physics

                cfg = benchlib.problem_config(p)
                side = cfg.data.patch_size
                build_physics(cfg.operator, (cfg.data.channels, side, side), torch.device("cpu"))
            except Exception as exc:
                raise SystemExit(f"error: problem {p!r} cannot be benchmarked by name alone ({exc})") from None
    if checkpoint is not None:  # the reference model is a deblur one: say so before anything runs
        from jfb_inverse.training.checkpoint import load_checkpoint

        _, ckpt_cfg = load_checkpoint(checkpoint)
        if ckpt_cfg.problem != "deblur":
            raise SystemExit(
                f"error: --checkpoint {checkpoint!r} is for {ckpt_cfg.problem!r}; the benchmarks need a deblur model"
            )
    skipped: dict[str, str] = {}
    run_problems = []
    for p in wanted:
        if p in registered:
            run_problems.append(p)
        else:
            skipped[f"problem:{p}"] = f"problem {p!r} is not registered here; items 1-3 skipped for it"
    for item in ("solver", "quality"):
        if item in items and "deblur" not in run_problems:
            skipped[item] = f"the {item} benchmark runs on deblur only, which --problems leaves out"
    if quick and "memory" in items:
        for p in run_problems:
            if p != "deblur":
                skipped[f"memory:{p}"] = "--quick runs the memory benchmark on deblur only"
    if dev.type != "cpu" and "malloc" in items:
        skipped["malloc"] = "CPU allocator check: not run on CUDA"
    per_problem = [i for i in items if i in ("step", "memory")]
    planned = [i for i in items if i not in ("step", "memory") and i not in skipped]
    planned += [f"{i}:{p}" for i in per_problem for p in run_problems if f"{i}:{p}" not in skipped]
    if not planned:
        raise SystemExit(f"error: nothing to run ({'; '.join(skipped.values())}); choose other --only/--problems")
    # After the checks (a refused run writes nothing), before the work (not after 40 minutes of it).
    benchlib.check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> None:
        log(f"[{time.perf_counter() - start:7.1f}s] {name} ...")
        try:
            results[name] = fn()
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(traceback.format_exc())

    ref_checkpoint = None
    # --quick uses the untrained network, unless a checkpoint is named (then that one, as asked).
    if (
        (checkpoint is not None or not quick)
        and "deblur" in run_problems
        and any(i in items for i in ("step", "solver"))
    ):
        ref_checkpoint, note = benchlib.reference_checkpoint("deblur", out, checkpoint, dev, steps=300)
        results["reference_model"] = note
    for p in run_problems:
        # The trained reference network when there is one (deblur: --checkpoint, builtin or a short run).
        ckpt = ref_checkpoint if p == "deblur" else (None if quick else benchlib.builtin_checkpoint(p))
        if "step" in items:
            attempt(
                f"step:{p}",
                lambda p=p, ckpt=ckpt: training_step.run(dev, quick, out, repeats, problem=p, checkpoint=ckpt),
            )
        if "memory" in items and f"memory:{p}" not in skipped:
            attempt(f"memory:{p}", lambda p=p: memory.run(dev, quick, out, problem=p, threads=threads))
    if "solver" in items and "deblur" in run_problems:
        for eq in ("none", "rotations"):  # the plain T, and the model's default evaluation map
            attempt(
                "solver:deblur" + ("" if eq == "none" else f"/{eq}"),
                lambda eq=eq: solver_convergence.run(
                    dev, quick, out, repeats, checkpoint=ref_checkpoint, equivariance=eq
                ),
            )
    if "quality" in items and "deblur" in run_problems:
        attempt("quality:deblur", lambda: time_to_quality.run(dev, quick, out, budget_s=budget_s))
    if "deepinv" in items:
        attempt("deepinv", lambda: vs_deepinv.run(dev, quick, out, repeats))
    if "malloc" in items and "malloc" not in skipped:
        attempt(
            "malloc",
            lambda: malloc_env.run(quick, out, rounds=1 if quick else min(repeats or 3, 3), threads=threads),
        )
    if "hot_path" in items:
        attempt("hot_path", lambda: profile_hot_path.run(dev, quick, out, compile_it=not quick))
    if "kernels" in items:
        attempt("kernels", lambda: solver_kernels.run(dev, quick, out, repeats))
    table = headline_table(results)
    summary = {
        "machine": benchlib.finish_info(info),
        "options": {
            "device": device,
            "quick": quick,
            "items": items,
            "problems": run_problems,
            "threads": threads,
            "repeats": repeats,
            "quality_budget_s": budget_s,
        },
        "results": {k: _brief(v) for k, v in results.items()},
        "skipped": skipped,
        "errors": errors,
        "table": table,
        "seconds": round(time.perf_counter() - start, 1),
    }
    benchlib.write_json(out, "summary", summary)
    (out / "summary.md").write_text(markdown_table(table, summary) + "\n")
    log(markdown_table(table, summary))
    return summary


def summarize(out: Path = benchlib.DEFAULT_OUT) -> dict[str, Any]:
    """Rebuild ``summary.json`` / ``summary.md`` from the JSON files already in ``out`` (no measuring)."""
    import json

    out = Path(out)
    results: dict[str, Any] = {}
    patterns = {
        "training_step_*.json": "step",
        "memory_*.json": "memory",
        "solver_convergence_*.json": "solver",
        "time_to_quality_*.json": "quality",
    }
    for pattern, key in patterns.items():
        for path in sorted(out.glob(pattern)):
            try:
                payload = json.loads(path.read_text())
                payload["problem"]
            except (ValueError, KeyError, TypeError):
                continue  # not a benchmark file of the standard set
            eq = payload.get("setup", {}).get("equivariance", "none")
            suffix = "" if eq == "none" else f"/{eq}"
            # Only the files run_all writes (``training_step_deblur.json``): the glob also matches
            # kept copies of other runs and machines (``training_step_deblur_s20_zen4.json``).
            if path.stem != pattern.split("*")[0] + payload["problem"] + suffix.replace("/", "_"):
                continue
            results[f"{key}:{payload['problem']}{suffix}"] = payload
    for name, key in (("vs_deepinv.json", "deepinv"), ("malloc.json", "malloc")):
        if (out / name).is_file():
            results[key] = json.loads((out / name).read_text())

    def run_order(key: str) -> tuple[bool, bool, int, str]:
        # run_all's order: step then memory per problem (deblur first), then the other items.
        kind, _, problem = key.partition(":")
        per_problem = kind in ("step", "memory")
        return (not per_problem, per_problem and problem != "deblur", ITEMS.index(kind), key)

    results = {key: results[key] for key in sorted(results, key=run_order)}
    machines = [r["machine"] for r in results.values() if isinstance(r, dict) and "machine" in r]
    machine = dict(machines[0]) if machines else benchlib.finish_info(benchlib.machine_info("cpu"))
    if machines:
        machine["loadavg_end"] = machines[-1].get("loadavg_end")
    table = headline_table(results)
    summary = {
        "machine": machine,
        "options": {"quick": False, "summarized_from": sorted(results)},
        "results": {k: _brief(v) for k, v in results.items()},
        "skipped": {},
        "errors": {},
        "table": table,
        "seconds": None,
    }
    benchlib.write_json(out, "summary", summary)
    (out / "summary.md").write_text(markdown_table(table, summary) + "\n")
    return summary


def _brief(payload: Any) -> Any:
    """The headline parts of a benchmark payload (ratios, targets, summaries)."""
    if not isinstance(payload, dict):
        return payload
    keep = ("ratios", "targets", "summary", "check", "ratios_to_default", "recommendation", "setup")
    return {k: payload[k] for k in keep if k in payload} or payload


def headline_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{measurement, value, target, met}`` for the README."""
    rows: list[dict[str, Any]] = []

    def add(measurement: str, value: Any, target: str = "", met: Any = None) -> None:
        rows.append({"measurement": measurement, "value": value, "target": target, "met": met})

    for key, res in results.items():
        if key.startswith("step:"):
            p, r, K = key.split(":")[1], res["ratios"], res["setup"]["K"]
            t = res["targets"]
            add(
                f"{p}: JFB step / ImplicitDiff step (Picard backward), K={K}",
                r["jfb_over_implicit_picard"],
                "<= 0.4",
                r["jfb_over_implicit_picard"] <= 0.4,
            )
            add(
                f"{p}: JFB step / ImplicitDiff step (Anderson backward), K={K}",
                r["jfb_over_implicit_anderson"],
                "<= 0.4",
                r["jfb_over_implicit_anderson"] <= 0.4,
            )
            add(
                f"{p}: JFB step / forward solve, K={K} (floor {r['floor_K_plus_3_over_K']})",
                r["jfb_over_forward"],
                "<= 1.15",
                t["jfb_over_forward_le_1.15"]["met"],
            )
            add(f"{p}: JFB-5 step / JFB step", r["jfbk5_over_jfb"])
            add(f"{p}: Unrolled({K}) step / JFB step", r["unrolled_over_jfb"])
            c = res["contenders"]
            add(
                f"{p}: VJPs per step, ImplicitDiff Picard / Anderson backward",
                f"{c['implicit_picard']['counts']['vjps']} / {c['implicit_anderson']['counts']['vjps']}",
            )
        elif key.startswith("memory:"):
            p = key.split(":")[1]
            for name, t in res["targets"].items():
                if name.startswith("jfb_peak"):
                    add(
                        f"{p}: JFB peak step memory K={res['setup']['depths'][-1]} / K={res['setup']['depths'][0]} "
                        f"(saved tensors: {t['saved_tensor_ratio']})",
                        t["value"],
                        "<= 1.10",
                        t["met"],
                    )
                else:
                    k_ref = name.rsplit("_K", 1)[1].split("_")[0]
                    add(
                        f"{p}: Unrolled / JFB peak step memory at K={k_ref} (saved tensors: {t['saved_tensor_ratio']})",
                        t["value"],
                        ">= 10",
                        t["met"],
                    )
            peaks = {(pt["strategy"], pt["K"]): pt["peak_mib"] for pt in res["points"]}
            ks = res["setup"]["depths"]
            add(
                f"{p}: peak MiB JFB / ImplicitDiff / Unrolled at K={ks[-1]}",
                " / ".join(f"{peaks[(s, ks[-1])]:.0f}" for s in ("jfb", "implicit", "unrolled")),
            )
        elif key.startswith("solver:"):
            r = res["ratios"]
            s = res["solvers"]
            which = "untrained" if "untrained" in str(res["setup"]["model"].get("source")) else "trained"
            eq = res["setup"].get("equivariance", "none")
            which += "" if eq == "none" else f", D averaged over {eq}"
            add(
                f"deblur ({which}): iterations to 1e-3, Anderson / Picard",
                f"{s['anderson']['iterations_to']['0.001']} / {s['picard']['iterations_to']['0.001']} "
                f"= {r['anderson_over_picard_iterations_0.001']}",
                "<= 0.5",
                res["targets"]["anderson_iterations_le_half_picard_at_1e-3"]["met"],
            )
            add(
                f"deblur ({which}): iterations to 1e-4, Anderson / Picard",
                f"{s['anderson']['iterations_to']['0.0001']} / {s['picard']['iterations_to']['0.0001']}",
            )
            add(
                f"deblur ({which}): time to 1e-3 / 1e-4, Anderson / Picard",
                f"{r['anderson_over_picard_time_0.001']} / {r['anderson_over_picard_time_0.0001']}",
            )
        elif key.startswith("quality:"):
            s = res["summary"]
            add(
                "deblur: seconds per training step, JFB / ImplicitDiff",
                f"{s['jfb']['seconds_per_step']} / {s['implicit']['seconds_per_step']}",
            )
            add(
                f"deblur: held-out PSNR after {res['setup']['budget_seconds_each']:.0f} s, JFB / ImplicitDiff",
                f"{s['jfb']['final_psnr']:.2f} / {s['implicit']['final_psnr']:.2f} dB",
            )
            g = s["time_to_goal"]
            cell = g.get("note") or f"{g['jfb']} / {g['implicit']}"
            add(f"deblur: seconds to {g['goal_psnr']:.2f} dB, JFB / ImplicitDiff", cell)
        elif key == "deepinv":
            r, c = res["ratios"], res["check"]
            add(
                f"ours / deepinv DEQ-PGD (JFB) training step, K={res['setup']['K']}",
                r["training_step_ours_over_deepinv"],
                "<= 0.9",
                r["training_step_ours_over_deepinv"] <= 0.9,
            )
            add(
                "ours / deepinv DEQ-PGD inference",
                r["inference_ours_over_deepinv"],
                "<= 0.9",
                r["inference_ours_over_deepinv"] <= 0.9,
            )
            if "training_step_same_layout_over_deepinv" in r:
                add(
                    "ours in deepinv's (NCHW) layout / deepinv: training step; inference",
                    f"{r['training_step_same_layout_over_deepinv']} / {r['inference_same_layout_over_deepinv']}",
                )
            add(
                "ours vs deepinv: max |output difference| (train / inference)",
                f"{c['train_output_max_abs_diff']:.1e} / {c['inference_output_max_abs_diff']:.1e}",
            )
        elif key == "malloc":
            r = res["ratios_to_default"]["mallopt"]
            add(
                "CPU allocator: default time / tune_malloc() time (inference 1x128^2, 8x64^2, JFB step)",
                f"{r['infer_1x128']} / {r['infer_8x64']} / {r['train_8x64']}",
            )
    return rows


def markdown_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The README table."""
    m = summary["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['torch_threads']} thread(s)"
    lines = [
        f"Measured on {where}, torch {m['torch']}, load average {m['loadavg_start']} -> {m['loadavg_end']}"
        f"{' (quick smoke run)' if summary['options']['quick'] else ''}.",
        "",
        "| measurement | value | target |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        mark = "" if r["met"] is None else (" (met)" if r["met"] else " (not met)")
        cells = (r["measurement"], r["value"], f"{r['target']}{mark if r['target'] else ''}")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    notes = [f"- skipped {name}: {why}" for name, why in summary.get("skipped", {}).items()]
    notes += [f"- failed {name}: {why}" for name, why in summary.get("errors", {}).items()]
    return "\n".join(lines + (["", *notes] if notes else []))


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ITEMS)}")
    parser.add_argument("--problems", default=None, help="problems for items 1-3 (default deblur,ct)")
    parser.add_argument("--checkpoint", default=None, help="trained deblur model (default: builtin or a short run)")
    parser.add_argument("--budget", type=float, default=None, help="time-to-quality seconds per training")
    parser.add_argument("--summarize", action="store_true", help="only rebuild summary.md/json from --out's JSON files")
    args = parser.parse_args()
    if args.summarize:
        summary = summarize(args.out)
        print(markdown_table(summary["table"], summary))
        return
    if args.budget is not None and args.budget <= 0:
        raise SystemExit(f"error: --budget must be positive seconds, got {args.budget:g}")
    summary = run_all(
        args.out,
        args.device,
        args.quick,
        [s.strip() for s in args.only.split(",") if s.strip()] if args.only is not None else None,
        [s.strip() for s in args.problems.split(",") if s.strip()] if args.problems is not None else None,
        args.checkpoint,
        args.threads,
        not args.no_malloc_tuning,
        repeats=args.repeats,
        budget_s=args.budget,
    )
    if summary["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
