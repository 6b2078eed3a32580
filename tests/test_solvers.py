"""Fixed-point solvers on a linear contraction with a known fixed point."""

from __future__ import annotations

import pytest
import torch

from jfb_inverse.implicit import Anderson, JFBk, Picard, Unrolled, fixed_point, make_solver


def exact_fixed_point(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(torch.eye(w.shape[0], dtype=w.dtype) - w, b.T).T


@pytest.mark.parametrize("solver", [Picard(tol=1e-8, max_iter=2000), Anderson(tol=1e-8, max_iter=500)])
def test_reaches_exact_fixed_point(solver, linear_contraction):
    w, b = linear_contraction
    u, stats = solver.solve(lambda u: u @ w.T + b, torch.zeros_like(b))
    exact = exact_fixed_point(w, b)
    rel_err = (u - exact).norm(dim=1) / exact.norm(dim=1)
    assert stats.all_converged
    # Error <= residual / (1 - ||W||) for a contraction: 1e-8 / 0.05 = 2e-7.
    assert float(rel_err.max()) < 5e-7
    assert stats.trace.shape == (int(stats.iterations.max()), b.shape[0])
    assert float(stats.residual.max()) <= 1e-8


def test_anderson_needs_far_fewer_iterations(linear_contraction):
    w, b = linear_contraction
    f = lambda u: u @ w.T + b  # noqa: E731
    _, picard = Picard(tol=1e-6, max_iter=2000).solve(f, torch.zeros_like(b))
    _, anderson = Anderson(m=5, tol=1e-6, max_iter=2000).solve(f, torch.zeros_like(b))
    assert picard.all_converged and anderson.all_converged
    assert int(anderson.iterations.max()) * 2 <= int(picard.iterations.max())


def test_relaxed_picard_converges_on_nonexpansive_rotation():
    # A rotation is non-expansive but not contractive: plain Picard cycles, KM (alpha<1) converges.
    theta = torch.tensor(1.0, dtype=torch.float64)
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()]), torch.stack([theta.sin(), theta.cos()])])
    center = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    f = lambda u: (u - center) @ rot.T + center  # noqa: E731
    u0 = torch.zeros(1, 2, dtype=torch.float64)
    _, plain = Picard(alpha=1.0, tol=1e-6, max_iter=300).solve(f, u0)
    u, km = Picard(alpha=0.5, tol=1e-6, max_iter=300).solve(f, u0)
    assert not plain.all_converged
    assert km.all_converged
    assert torch.allclose(u, center, atol=1e-5)


def test_per_sample_stopping_freezes_converged_samples():
    # Sample 0 contracts fast (0.1), sample 1 slowly (0.9).
    rates = torch.tensor([[0.1], [0.9]], dtype=torch.float64)
    f = lambda u: rates * u + 1.0  # noqa: E731
    u0 = torch.zeros(2, 3, dtype=torch.float64)
    _, batch = Picard(tol=1e-6, max_iter=500, stop="batch").solve(f, u0)
    _, sample = Picard(tol=1e-6, max_iter=500, stop="sample").solve(f, u0)
    assert batch.iterations[0] == batch.iterations[1]
    assert sample.iterations[0] < sample.iterations[1]
    assert sample.all_converged


@pytest.mark.parametrize("make", [Picard, Anderson])
@pytest.mark.parametrize("stop", ["batch", "sample"])
def test_lagged_stop_check_runs_one_iteration_more_and_keeps_results(make, stop, linear_contraction):
    # The GPU's stop check reads the previous iteration's flags (no host wait): forced on here.
    w, b = linear_contraction
    f = lambda u: u @ w.T + b  # noqa: E731
    u_now, now = make(tol=1e-6, max_iter=500, stop=stop, lagged_stop=False).solve(f, torch.zeros_like(b))
    u_lag, lag = make(tol=1e-6, max_iter=500, stop=stop, lagged_stop=True).solve(f, torch.zeros_like(b))
    assert now.all_converged and lag.all_converged
    assert lag.evaluations == now.evaluations + 1
    if stop == "sample":  # converged samples were frozen at once: their counts and iterates agree
        assert torch.equal(lag.iterations, now.iterations)
        assert torch.equal(u_lag, u_now)
    else:  # every sample ran the extra iteration: an iterate at least as good, kept as the best
        assert torch.equal(lag.iterations, now.iterations + 1)
        assert bool((lag.residual <= now.residual).all())
    exact = exact_fixed_point(w, b)
    assert float(((u_lag - exact).norm(dim=1) / exact.norm(dim=1)).max()) < 5e-5


@pytest.mark.parametrize("make", [Picard, Anderson])
@pytest.mark.parametrize("lagged", [False, True])
def test_per_sample_stop_never_returns_the_iterate_that_diverged(make, lagged):
    # Sample 0 contracts; sample 1 turns NaN from the 5th call on and is frozen there. Its frozen
    # iterate is the NaN one: it must not replace the best iterate on the later iterations.
    calls = [0]

    def f(u):
        calls[0] += 1
        out = 0.5 * u + 1.0
        if calls[0] >= 5:
            out = out.clone()
            out[1] = float("nan")
        return out

    u, stats = make(tol=1e-10, max_iter=200, stop="sample", lagged_stop=lagged).solve(f, torch.zeros(2, 3))
    assert torch.isfinite(u).all()
    assert bool(stats.converged[0]) and not bool(stats.converged[1])
    assert torch.allclose(u[0], torch.full((3,), 2.0))
    finite = stats.trace[:, 1][torch.isfinite(stats.trace[:, 1])]
    assert float(stats.residual[1]) == float(finite.min())  # the best one seen before it diverged
    if make is Picard:  # u_k = 2 - 2 * 0.5^k: the 4th iterate is the last finite one
        assert torch.allclose(u[1], torch.full((3,), 1.875))
    # The solve ends when the last sample freezes (one evaluation later with the lagged check),
    # not at max_iter: a sample frozen by a NaN never reaches tol.
    assert stats.evaluations == int(stats.iterations.max()) + int(lagged) < 200


def test_lagged_stop_check_never_exceeds_max_iter(linear_contraction):
    w, b = linear_contraction
    _, stats = Picard(tol=1e-12, max_iter=7, lagged_stop=True).solve(lambda u: u @ w.T + b, torch.zeros_like(b))
    assert stats.evaluations == 7 and not stats.all_converged


def test_anderson_singular_system_falls_back_without_crash():
    # f is constant: after one step the residual history is exactly zero and the
    # least-squares system is singular.
    target = torch.ones(3, 5)
    u, stats = Anderson(m=4, lam=0.0, tol=1e-12, max_iter=10).solve(lambda u: target.clone(), torch.zeros(3, 5))
    assert torch.equal(u, target)
    assert torch.isfinite(stats.residual).all()


def test_divergence_returns_best_iterate_and_says_so():
    f = lambda u: -2.0 * u + 1.0  # noqa: E731 - oscillating, expanding: Picard diverges (overflows)
    u, stats = Picard(tol=1e-6, max_iter=500).solve(f, torch.zeros(2, 4))
    assert not stats.converged.any()
    assert not torch.isfinite(stats.trace[-1]).any()  # it did blow up...
    # ...but it returns f(u_k) for the u_k of the smallest residual: f(0) = 1, with the residual of
    # u_0 = 0, ||1 - 0|| / ||1|| = 1 (later ones tend to 1.5, then overflow).
    assert torch.equal(u, torch.ones(2, 4))
    assert torch.allclose(stats.residual, torch.ones(2))


def test_solver_validation_messages():
    with pytest.raises(ValueError, match="alpha"):
        Picard(alpha=1.5)
    with pytest.raises(ValueError, match="history m"):
        Anderson(m=0)
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver("newton")
    with pytest.raises(ValueError, match="tol"):
        Picard(tol=0.0).solve(lambda u: u, torch.zeros(1, 2))
    # Wrong types, named (they used to fail as TypeErrors deep inside a solve).
    for make, message in (
        (lambda: Anderson(m=2.5), "Anderson m must be an integer, got 2.5"),
        (lambda: Picard(max_iter=10.0), "Picard max_iter must be an integer"),
        (lambda: Picard(tol="1e-4"), "Picard tol must be a number, got '1e-4'"),
        (lambda: Anderson(beta=float("nan")), "Anderson beta must be a number"),
        (lambda: JFBk(k=2.0), "JFBk k must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match=r"solver must be a FixedPointSolver, got str 'anderson'.*make_solver"):
        fixed_point(lambda u: u, torch.zeros(1, 2), "anderson")
    with pytest.raises(ValueError, match=r"gradient must be a GradientStrategy, got str 'jfb'.*make_gradient"):
        fixed_point(lambda u: u, torch.zeros(1, 2), Picard(), "jfb")
    with pytest.raises(ValueError, match=r"u0 is an empty batch \(shape \(0, 3\)\)"):
        Picard().solve(lambda u: u, torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"u0 must be a torch\.Tensor, got ndarray"):
        Picard().solve(lambda u: u, torch.zeros(1, 3).numpy())
    with pytest.raises(ValueError, match=r"the map returned a ndarray; f must return a torch\.Tensor"):
        Picard().solve(lambda u: (0.5 * u + 1).numpy(), torch.zeros(2, 3))
    # Bounds at construction (a bad tol used to surface only when a solve ran), and an infinite tol,
    # which reported a diverging or NaN solve as converged.
    for make, message in (
        (lambda: Picard(tol=0.0), "Picard tol must be a finite number > 0, got 0.0"),
        (lambda: Picard(tol=float("inf")), "Picard tol must be a finite number > 0, got inf"),
        (lambda: Anderson(max_iter=0), "Anderson max_iter must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match=r"solver name must be a string, got None"):
        make_solver(None)
    # Through fixed_point, a non-tensor u0 and a map that is not a function are named too.
    with pytest.raises(ValueError, match=r"u0 must be a torch\.Tensor, got list"):
        fixed_point(lambda u: u, [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"fn must be a function of the iterate, got int"):
        fixed_point(3, torch.zeros(1, 2))


def test_unrolled_checks_what_the_solver_checks():
    # With autograd on, Unrolled never calls the solver: it returned a broadcast shape, another
    # dtype or an integer iterate without a word, where the same call under no_grad was refused.
    u0 = torch.zeros(2, 3)
    for fn, start, message in (
        (lambda u: torch.zeros(4, 2, 3), u0, r"the map returned torch.float32 of shape \(4, 2, 3\)"),
        (lambda u: u.double(), u0, r"the map returned torch.float64"),
        (lambda u: u, torch.zeros(2, 3, dtype=torch.long), r"u0 must be a floating-point tensor"),
    ):
        with pytest.raises(ValueError, match=message):
            fixed_point(fn, start, Picard(), Unrolled(3))


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_map_output_must_match_the_iterate(make):
    u0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape and dtype"):  # would be cast into float32 buffers
        make(max_iter=5).solve(lambda u: (0.5 * u + 1).double(), u0)
    with pytest.raises(ValueError, match="shape and dtype"):  # would be broadcast over the batch
        make(max_iter=5).solve(lambda u: torch.ones(1, 3), u0)
    with pytest.raises(ValueError, match="floating-point"):
        make(max_iter=5).solve(lambda u: u, torch.zeros(2, 3, dtype=torch.long))


def test_anderson_refuses_half_precision_iterates_picard_runs_them():
    u0 = torch.zeros(2, 3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float32 or float64"):
        Anderson().solve(lambda u: 0.5 * u + 1, u0)
    u, stats = Picard(tol=1e-2, max_iter=50).solve(lambda u: 0.5 * u + 1, u0)
    assert u.dtype == torch.bfloat16 and stats.all_converged


def test_anderson_damps_its_first_step_too():
    # f(u) = 0.5 u + 1 from 0 with beta = 0.5: u_1 = 0.5 * f(0) + 0.5 * 0 = 0.5, f(u_1) = 1.25. The
    # second residual ||1.25 - 0.5|| / 1.25 = 0.6 beats the first (1), so f(u_1) is returned.
    u, stats = Anderson(beta=0.5, tol=1e-12, max_iter=2).solve(lambda u: 0.5 * u + 1, torch.zeros(1, 4))
    assert torch.allclose(u, torch.full((1, 4), 1.25))
    assert torch.allclose(stats.residual, torch.tensor([0.6]))


def test_residual_is_infinite_whenever_a_norm_is_not_finite():
    from jfb_inverse.implicit.stats import residual_from_norms

    inf, nan = float("inf"), float("nan")
    diff = torch.tensor([1.0, nan, 1.0, inf, inf, 0.0, 2.0])
    scale = torch.tensor([2.0, 1.0, nan, 1.0, inf, inf, 0.0])
    res = residual_from_norms(diff, scale)
    # A finite ratio, then every non-finite case as inf: a huge iterate's norm that overflows
    # (scale inf, diff finite) must not read as converged (ratio 0); a zero scale stays finite.
    assert res[0] == 0.5
    assert torch.equal(res[1:6], torch.full((5,), inf))
    assert torch.isfinite(res[6]) and res[6] > 1e9


@pytest.mark.parametrize("make", [Picard, Anderson])
@pytest.mark.parametrize("lagged", [False, True])
def test_whole_batch_stop_counts_every_evaluation_for_every_sample(make, lagged):
    # Sample 1 contracts far more slowly: the batch runs until it converges, and every sample's
    # iteration count is the number of evaluations (the count is not tracked per iteration).
    rate = torch.tensor([[0.1], [0.9]])
    u, stats = make(tol=1e-6, max_iter=500, lagged_stop=lagged).solve(lambda u: rate * u + 1.0, torch.zeros(2, 4))
    assert torch.allclose(u, 1.0 / (1.0 - rate).expand(2, 4), rtol=1e-4)
    assert stats.iterations.tolist() == [stats.evaluations] * 2
    assert stats.trace.shape == (stats.evaluations, 2)
    assert bool(stats.converged.all())


def test_a_diverged_first_iterate_is_never_the_best_one():
    # f(u0) is inf for sample 1 on the first call (the iteration then stays at inf): a residual of
    # inf is never an improvement, so sample 1 keeps its finite start and reports inf.
    calls = [0]

    def f(u):
        calls[0] += 1
        out = 0.5 * u + 1.0
        if calls[0] == 1:
            out = out.clone()
            out[1] = float("inf")
        return out

    for lagged in (False, True):
        calls[0] = 0
        u, stats = Picard(tol=1e-12, max_iter=3, lagged_stop=lagged).solve(f, torch.zeros(2, 3))
        assert torch.equal(u[1], torch.zeros(3))
        assert float(stats.residual[1]) == float("inf") and not bool(stats.converged[1])
        assert torch.isfinite(stats.residual[0])


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_cuda_graph_is_ignored_off_cuda(make, linear_contraction):
    # The option only changes how f runs on a CUDA device; on the CPU the solve is the same one.
    w, b = linear_contraction
    plain_u, plain = make(tol=1e-8, max_iter=500).solve(lambda u: u @ w.T + b, torch.zeros_like(b))
    graph_u, graphed = make(tol=1e-8, max_iter=500, cuda_graph=True).solve(lambda u: u @ w.T + b, torch.zeros_like(b))
    assert torch.equal(graph_u, plain_u) and graphed.evaluations == plain.evaluations


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_a_map_that_could_not_be_recorded_is_not_recorded_again(make, linear_contraction, monkeypatch):
    # Off CUDA, a stand-in for the recording: the first solve's wrapper "fails" (as a map that reads
    # the host would), runs f eagerly, and the solver then asks for no recording in its next solves.
    from jfb_inverse.implicit import solvers

    asked = []

    def stand_in(f, u0, cuda_graph):
        asked.append(cuda_graph)
        if not cuda_graph:
            return f
        wrapper = solvers._GraphedMap(f)
        wrapper.failed = True  # what a failed capture leaves; its calls then run f eagerly
        return wrapper

    monkeypatch.setattr(solvers, "_maybe_graphed", stand_in)
    w, b = linear_contraction
    solver = make(tol=1e-8, max_iter=500, cuda_graph=True)
    first, _ = solver.solve(lambda u: u @ w.T + b, torch.zeros_like(b))
    second, _ = solver.solve(lambda u: u @ w.T + b, torch.zeros_like(b))
    assert asked == [True, False]
    assert torch.equal(first, second)
    make(tol=1e-8, max_iter=500, cuda_graph=True)._graphed(lambda u: u, b)  # another solver tries again
    assert asked == [True, False, True]


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_half_precision_norms_that_sum_past_the_range_still_converge(make):
    # fp16: two finite norms whose sum overflows (65504) must not read as a diverged iterate.
    if make is Anderson:
        pytest.skip("Anderson refuses half precision")
    target = torch.full((1, 4096), 1000.0, dtype=torch.float16)  # ||target|| = 64000
    u, stats = make(tol=1e-2, max_iter=50).solve(lambda u: 0.4 * u + 0.6 * target, torch.zeros_like(target))
    assert bool(stats.converged.all()) and stats.evaluations > 1
    assert torch.allclose(u.float(), target.float(), rtol=2e-2)


@pytest.mark.parametrize("make", [Picard, Anderson])
def test_the_batch_stops_once_every_sample_has_been_under_tol(make):
    # Residuals that bounce near float32's floor: each sample is under tol in another iteration. The
    # solve used to wait for an iteration with both under at once, ran to max_iter, and reported both
    # converged (by their best iterates) all the same.
    steps = iter([[1e-2, 1e-2], [1e-9, 1e-2], [1e-2, 1e-9]] + [[1e-2, 1e-2]] * 100)

    def bouncing(u: torch.Tensor) -> torch.Tensor:  # residual f(u) - u: this iteration's step, whatever u is
        return u + torch.tensor(next(steps))[:, None]

    u, stats = make(tol=1e-6, max_iter=50).solve(bouncing, torch.ones(2, 4))
    assert stats.evaluations == 3 and stats.iterations.tolist() == [3, 3]
    assert stats.converged.tolist() == [True, True] and float(stats.residual.max()) < 1e-8
    if make is Picard:  # each sample's iterate of the iteration it was under tol: 1 + 1e-2, 1 + 2e-2
        torch.testing.assert_close(u, torch.tensor([[1.01], [1.02]]).expand(2, 4))
