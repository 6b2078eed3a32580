"""CUDA checks (run with `python3 -m pytest -m gpu` on a machine with a GPU)."""

from __future__ import annotations

import pytest
import torch

from jfb_inverse.implicit import Anderson, Picard
from jfb_inverse.metrics import psnr
from jfb_inverse.models import build_model
from jfb_inverse.problems import resolve_config, simulate
from jfb_inverse.training.device import resolve_device
from jfb_inverse.training.loop import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SMALL = {"data": {"patch_size": 32, "eval_size": 32}, "training": {"steps": 5, "batch_size": 4, "log_every": 5}}


def test_auto_device_picks_cuda():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_runs_on_cuda_in_each_precision(tmp_path, precision):
    cfg = resolve_config("deblur", overrides={**SMALL, "training": {**SMALL["training"], "precision": precision}})
    result = train(cfg, tmp_path, device="cuda")
    assert result.steps == 5
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))


def test_everything_follows_the_device_and_bf16_matches_fp32():
    cfg = resolve_config("deblur")
    x = torch.rand(2, 1, 64, 64, device="cuda")
    outputs = {}
    for precision in ("fp32", "bf16"):
        cfg_p = cfg.model_copy(update={"training": cfg.training.model_copy(update={"precision": precision})})
        torch.manual_seed(0)
        model, physics = build_model(cfg_p, "cuda")
        model.eval()
        p = physics.for_image((1, 64, 64))
        y = simulate(x, p, cfg.noise, torch.Generator(device="cuda").manual_seed(0))
        with torch.inference_mode():
            outputs[precision] = model(y, p)
        assert outputs[precision].device.type == "cuda" and outputs[precision].dtype == torch.float32
    gap = (psnr(outputs["fp32"].clamp(0, 1), x) - psnr(outputs["bf16"].clamp(0, 1), x)).abs().max()
    assert float(gap) < 0.2


def test_lipschitz_monitor_runs_on_cuda_ct(tmp_path):
    # GPU sessions found cuDNN's grid sampler (CT's Radon transform) refusing the double backward the
    # estimate used (and, with cuDNN switched off, its recorded backward); the estimate now needs
    # first-order VJPs only.
    cfg = resolve_config("ct", overrides={**SMALL, "training": {**SMALL["training"], "lipschitz_every": 5}})
    result = train(cfg, tmp_path, device="cuda")
    assert result.history[-1]["lipschitz"] > 0


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_stop_check_on_cuda_reads_flags_one_iteration_late(make):
    # On CUDA the stop flag travels to the host asynchronously (pinned memory, an event) and is read
    # one iteration later: one evaluation more than a synchronous check, the same fixed point.
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(16, 16, device="cuda", generator=gen, dtype=torch.float64)
    w = 0.9 * w / torch.linalg.matrix_norm(w, 2)
    b = torch.randn(4, 16, device="cuda", generator=gen, dtype=torch.float64)
    f = lambda u: u @ w.T + b  # noqa: E731
    u_sync, synced = make(tol=1e-8, max_iter=1000, lagged_stop=False).solve(f, torch.zeros_like(b))
    u_auto, auto = make(tol=1e-8, max_iter=1000).solve(f, torch.zeros_like(b))
    assert synced.all_converged and auto.all_converged
    assert auto.evaluations == synced.evaluations + 1
    assert torch.allclose(u_auto, u_sync, rtol=1e-6, atol=1e-9)


def test_auto_memory_format_on_cuda_follows_tensor_cores():
    # Channels-last on GPUs with TF32 tensor cores (compute capability 8.0+), measured faster on an
    # H200 (benchmarks/vs_deepinv.py --patch 256 --batch 32); the default layout on older GPUs.
    model, _ = build_model(resolve_config("deblur"), "cuda")
    weight = next(m.weight for m in model.regularizer.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    tensor_cores = torch.cuda.get_device_capability() >= (8, 0)
    assert weight.is_contiguous(memory_format=torch.channels_last) == tensor_cores
    assert weight.is_contiguous() != tensor_cores


@pytest.mark.parametrize("name", ["builtin:deblur", "builtin:ct"])
def test_lipschitz_estimate_on_cuda_matches_the_cpu(name):
    # The estimate's central difference needs full fp32: TF32 convolutions (cuDNN's default on
    # compute capability 8.0+) would swamp it. The same weights, measurements and power-iteration
    # start on both devices (a start drawn by a CUDA generator read 3% off on builtin:ct).
    from jfb_inverse.datasets import load_builtin

    from jfb_inverse.training.checkpoint import load_model
    from jfb_inverse.training.loop import lipschitz_at_fixed_point

    model, cfg, cache = load_model(name, "cpu")
    x = load_builtin("camera", size=64)[None]
    y = simulate(x, cache.for_image(tuple(x.shape[1:])), cfg.noise, torch.Generator().manual_seed(0))
    estimates = {}
    for device in ("cpu", "cuda"):
        model, _, cache = load_model(name, device)
        estimates[device] = lipschitz_at_fixed_point(model, y.to(device), cache.for_image(tuple(x.shape[1:])))
    assert estimates["cuda"] == pytest.approx(estimates["cpu"], rel=0.02)


def _conv_contraction(device: str = "cuda"):
    """A small convolutional contraction with an FFT in it (as the deblur T has), and a counter of
    its Python-level calls: a replayed CUDA graph does not run the Python."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, 3, padding=1, device=device)
    back = torch.nn.Conv2d(8, 1, 3, padding=1, device=device)
    with torch.no_grad():
        back.weight.mul_(0.1)
    b = torch.rand(4, 1, 32, 32, device=device)
    calls = [0]

    def f(u):
        calls[0] += 1
        smooth = torch.fft.irfft2(torch.fft.rfft2(u) * 0.5, s=u.shape[-2:])
        return smooth + back(torch.relu(conv(u))) + b

    return f, b, calls


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_cuda_graph_replays_the_map_and_matches_eager_solves(make):
    f, b, calls = _conv_contraction()
    eager_u, eager = make(tol=1e-6, max_iter=200).solve(f, torch.zeros_like(b))
    calls[0] = 0
    graph_u, graphed = make(tol=1e-6, max_iter=200, cuda_graph=True).solve(f, torch.zeros_like(b))
    assert graphed.evaluations == eager.evaluations > 5
    assert calls[0] == 2  # the warm-up and the recording; every later application was a replay
    assert torch.allclose(graph_u, eager_u, rtol=1e-5, atol=1e-6)
    assert torch.allclose(graphed.residual, eager.residual, rtol=1e-3, atol=1e-9)


def test_cuda_graph_falls_back_to_eager_for_a_map_that_reads_the_host():
    f, b, _ = _conv_contraction()

    def syncing(u):
        if float(u.abs().max()) > 1e9:  # a host read: cannot be recorded
            raise AssertionError
        return f(u)

    eager_u, _ = Picard(tol=1e-6, max_iter=200).solve(syncing, torch.zeros_like(b))
    with pytest.warns(RuntimeWarning, match="could not be recorded"):
        graph_u, stats = Picard(tol=1e-6, max_iter=200, cuda_graph=True).solve(syncing, torch.zeros_like(b))
    assert bool(stats.converged.all())
    assert torch.allclose(graph_u, eager_u, rtol=1e-5, atol=1e-6)
    # The CUDA context is usable after the failed recording.
    assert float((torch.ones(3, device="cuda") * 2).sum()) == 6.0


@pytest.mark.filterwarnings("error:cuda_graph")  # a silent fallback to eager calls fails this test
def test_cuda_graph_in_the_model_matches_reconstructions_and_jfb_gradients():
    # solver.cuda_graph from the problem definition: the same reconstruction in eval mode (under
    # inference_mode, as the CLI runs it) and the same JFB gradient in a training step.
    cfg = resolve_config("deblur", overrides={"solver": {"name": "picard", "max_iter": 15, "eval_max_iter": 30}})
    graph_cfg = cfg.model_copy(update={"solver": cfg.solver.model_copy(update={"cuda_graph": True})})
    x = torch.rand(4, 1, 64, 64, device="cuda")
    results = {}
    for name, c in (("eager", cfg), ("graph", graph_cfg)):
        torch.manual_seed(0)
        model, cache = build_model(c, "cuda")
        assert model.solver.cuda_graph == (name == "graph") and model.eval_solver.cuda_graph == (name == "graph")
        p = cache.for_image((1, 64, 64))
        y = simulate(x, p, cfg.noise, torch.Generator(device="cuda").manual_seed(0))
        model.eval()
        with torch.inference_mode():
            rec = model(y, p)
        model.train()
        torch.nn.functional.mse_loss(model(y, p), x).backward()
        grads = torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])
        results[name] = (rec, grads, model.last_stats.evaluations)
    (rec_e, grad_e, ev_e), (rec_g, grad_g, ev_g) = results["eager"], results["graph"]
    assert ev_e == ev_g
    assert torch.allclose(rec_g, rec_e, rtol=1e-4, atol=1e-5)
    assert torch.allclose(grad_g, grad_e, rtol=1e-3, atol=1e-6)


def test_a_model_moved_to_cuda_after_building_on_the_cpu_reconstructs_there():
    """build_model on the CPU, then ``.to("cuda")``: the physics follow the measurements' device."""
    from jfb_inverse.evaluation import evaluate

    cfg = resolve_config("deblur")
    model, cache = build_model(cfg)  # CPU
    model.eval()
    with torch.no_grad():  # a non-zero residual network, so that the network's arithmetic is compared too
        model.regularizer.net[-1].weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 1, 48, 40, generator=torch.Generator().manual_seed(0))
    y = cache.for_image((1, 48, 40))(x)
    with torch.no_grad():
        on_cpu = model(y)
        cpu_iterations = int(model.last_stats.iterations.max())
        on_cuda = model.to("cuda")(y.to("cuda"))
    assert on_cuda.device.type == "cuda"
    # CUDA's lagged stop test may run one iteration more, each moving the iterate by under the tolerance.
    assert abs(int(model.last_stats.iterations.max()) - cpu_iterations) <= 1
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-3, rtol=0)
    report = evaluate(model, cache, cfg, [("img", x[0])], seed=0, with_baselines=False).report
    assert report["mean"]["psnr"]["model"] > 20
