"""Per-sample stopping that computes only the samples still iterating (``SampleSubsetMap``)."""

from __future__ import annotations

import pytest
import torch

from jfb_inverse.implicit import Anderson, Picard
from jfb_inverse.implicit.solvers import SampleSubsetMap


class PerSampleContraction:
    """``f(u)_i = rate_i * tanh(u_i) @ W^T + b_i``: samples contract at different rates, and a
    nonlinearity so that Anderson's mixing is not exact. Counts the samples it computes."""

    def __init__(self, rates: list[float], size: int = 6, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(size, size, generator=gen, dtype=torch.float64)
        self.w = w / torch.linalg.matrix_norm(w, ord=2)
        self.rates = torch.tensor(rates, dtype=torch.float64)
        self.b = torch.randn(len(rates), size, generator=gen, dtype=torch.float64)
        self.samples_computed = 0

    def _apply(self, u: torch.Tensor, rates: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.samples_computed += u.shape[0]
        return rates[:, None] * torch.tanh(u) @ self.w.T + b

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self._apply(u, self.rates, self.b)


class SubsetContraction(PerSampleContraction):
    def on_samples(self, u: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._apply(u[index], self.rates[index], self.b[index])


RATES = [0.2, 0.95, 0.5, 0.9]


@pytest.mark.parametrize(
    "make",
    [lambda: Picard(tol=1e-9, max_iter=400, stop="sample"), lambda: Anderson(tol=1e-9, max_iter=400, stop="sample")],
)
def test_subset_solve_gives_the_same_iterates_with_less_work(make):
    full, subset = PerSampleContraction(RATES), SubsetContraction(RATES)
    assert isinstance(subset, SampleSubsetMap) and not isinstance(full, SampleSubsetMap)
    u0 = torch.zeros(len(RATES), 6, dtype=torch.float64)
    u_full, s_full = make().solve(full, u0)
    u_sub, s_sub = make().solve(subset, u0)
    assert s_full.all_converged and s_sub.all_converged
    # Every sample is treated on its own by both solvers: the same iterates, counts and trace.
    torch.testing.assert_close(u_sub, u_full, rtol=0, atol=1e-12)
    assert torch.equal(s_sub.iterations, s_full.iterations)
    torch.testing.assert_close(s_sub.trace, s_full.trace, rtol=0, atol=1e-12)
    # Work: the full map computed every sample in every evaluation; the subset map only the
    # samples still iterating, which is the sum of the per-sample counts.
    assert full.samples_computed == len(RATES) * s_full.evaluations
    assert subset.samples_computed == int(s_sub.iterations.sum())
    assert int(s_sub.iterations.min()) < s_sub.evaluations  # some sample stopped early: less work
    assert subset.samples_computed < full.samples_computed


def test_whole_batch_stop_never_uses_the_subset_path():
    f = SubsetContraction(RATES)
    _, stats = Anderson(tol=1e-9, max_iter=400, stop="batch").solve(f, torch.zeros(4, 6, dtype=torch.float64))
    assert f.samples_computed == 4 * stats.evaluations


def test_lagged_stop_check_never_uses_the_subset_path():
    # With the lagged check (the CUDA default) the active set is not known on the host in time.
    f = SubsetContraction(RATES)
    _, stats = Picard(tol=1e-9, max_iter=400, stop="sample", lagged_stop=True).solve(
        f, torch.zeros(4, 6, dtype=torch.float64)
    )
    assert stats.all_converged
    assert f.samples_computed == 4 * stats.evaluations


def test_a_subset_map_that_returns_the_wrong_shape_is_named():
    class Wrong(SubsetContraction):
        def on_samples(self, u, index):
            return super().on_samples(u, index)[:1]

    with pytest.raises(ValueError, match="on_samples returned"):
        Picard(tol=1e-12, max_iter=400, stop="sample").solve(Wrong(RATES), torch.zeros(4, 6, dtype=torch.float64))


def _deblur_model(step: str, input_injection: bool, stop: str = "sample"):
    from torch import nn

    from jfb_inverse.models import build_model
    from jfb_inverse.problems import resolve_config

    cfg = resolve_config(
        "deblur",
        overrides={
            "model": {"step": step, "input_injection": input_injection, "width": 8},
            "solver": {"stop": stop, "tol": 1e-5, "max_iter": 200, "eval_tol": 1e-5},
            "training": {"precision": "fp32"},  # float64 here: no autocast
        },
    )
    torch.manual_seed(0)
    model, cache = build_model(cfg)
    last = [m for m in model.regularizer.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():  # a residual net that is not zero, so D is not linear
        last.weight.normal_(0.0, 0.02)
    return model.double(), cache


@pytest.mark.parametrize("step", ["prox", "ffpn"])
@pytest.mark.parametrize("input_injection", [False, True])
@pytest.mark.parametrize("training", [True, False])  # eval mode averages D over quarter-turns
def test_the_reconstructors_map_on_samples_is_its_rows(step, input_injection, training):
    model, cache = _deblur_model(step, input_injection)
    model.train(training)
    x = torch.rand(4, 1, 16, 20, dtype=torch.float64)
    physics, _ = cache.for_measurement((1, 16, 20))
    y = physics.A(x)
    fn, u0 = model.fixed_point_map(y, physics)
    assert isinstance(fn, SampleSubsetMap)
    u = u0 + 0.1 * torch.rand_like(u0)
    with torch.no_grad():
        full = fn(u)
        for index in ([1, 3], [2], [0, 1, 2]):
            idx = torch.tensor(index)
            torch.testing.assert_close(fn.on_samples(u, idx), full[idx], rtol=0, atol=1e-12)


def test_a_per_sample_deblur_solve_matches_the_full_batch_one():
    # The model's solve with stop="sample" (the regulariser on the samples still iterating only)
    # against the same solve with a map that hides on_samples (every sample every iteration).
    model, cache = _deblur_model("prox", False)
    model.train()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 16, 16, generator=gen, dtype=torch.float64)
    x[2:] = x[2:].mean()  # flat images converge at once: the other samples run on alone
    physics, _ = cache.for_measurement((1, 16, 16))
    y = physics.A(x)
    fn, u0 = model.fixed_point_map(y, physics)
    calls = []
    hidden = lambda u: (calls.append(u.shape[0]), fn(u))[1]  # noqa: E731
    with torch.no_grad():
        u_sub, s_sub = model.solver.solve(fn, u0)
        u_full, s_full = model.solver.solve(hidden, u0)
    assert s_sub.all_converged and torch.equal(s_sub.iterations, s_full.iterations)
    assert int(s_sub.iterations.min()) < int(s_sub.iterations.max())
    torch.testing.assert_close(u_sub, u_full, rtol=0, atol=1e-10)
    assert set(calls) == {4}


def test_definitions_stop_training_by_batch_and_evaluation_by_sample():
    from jfb_inverse.errors import ConfigError
    from jfb_inverse.models import build_model
    from jfb_inverse.problems import resolve_config

    model, _ = build_model(resolve_config("deblur"))
    assert model.solver.stop == "batch" and model.eval_solver.stop == "auto"
    model, _ = build_model(resolve_config("deblur", overrides={"solver": {"stop": "sample", "eval_stop": "batch"}}))
    assert model.solver.stop == "sample" and model.eval_solver.stop == "batch"
    with pytest.raises(ConfigError, match=r"solver\.eval_stop"):
        resolve_config("deblur", overrides={"solver": {"eval_stop": "each"}})


def test_auto_stops_by_sample_only_where_the_flags_are_read_at_once():
    u0 = torch.zeros(4, 6, dtype=torch.float64)
    f = SubsetContraction(RATES)
    _, stats = Anderson(tol=1e-9, max_iter=400, stop="auto").solve(f, u0)  # the CPU: read at once
    assert f.samples_computed == int(stats.iterations.sum()) < 4 * stats.evaluations
    f = SubsetContraction(RATES)  # lagged, as on CUDA: the whole batch, every sample every iteration
    _, stats = Anderson(tol=1e-9, max_iter=400, stop="auto", lagged_stop=True).solve(f, u0)
    assert f.samples_computed == 4 * stats.evaluations and set(stats.iterations.tolist()) == {stats.evaluations}
    with pytest.raises(ValueError, match="unknown stop rule 'each'"):
        Picard(stop="each")
