"""Gradient strategies against analytic gradients on a linear equilibrium.

With T(u) = W u + b and L = 0.5 ||u* - t||^2:
    true gradient    dL/db = (I - W)^{-T} (u* - t),   dL/dW = (I - W)^{-T} (u* - t) u*^T
    JFB gradient     dL/db = (u* - t),                dL/dW = (u* - t) u*^T
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from jfb_inverse.implicit import JFB, Anderson, ImplicitDiff, JFBk, Picard, Unrolled, fixed_point, make_gradient


def run(strategy, w, b, target, solver=None):
    w = w.clone().requires_grad_()
    b = b.clone().requires_grad_()
    u, stats = fixed_point(
        lambda u: u @ w.T + b, torch.zeros_like(b), solver or Anderson(tol=1e-12, max_iter=500), strategy
    )
    loss = 0.5 * ((u - target) ** 2).sum()
    loss.backward()
    return w.grad, b.grad, stats


def analytic(w, b, target):
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    u = torch.linalg.solve(eye - w, b.T).T
    v = u - target
    g = torch.linalg.solve((eye - w).T, v.T).T
    return {"true_b": g, "true_w": g.T @ u, "jfb_b": v, "jfb_w": v.T @ u}


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def target(linear_contraction):
    return torch.randn_like(linear_contraction[1])


@pytest.mark.parametrize("backward", ["picard", "anderson"])
def test_implicit_diff_matches_analytic_gradient(backward, linear_contraction, target):
    w, b = linear_contraction
    gw, gb, stats = run(ImplicitDiff(backward, tol=1e-10, max_iter=2000), w, b, target)
    ref = analytic(w, b, target)
    assert rel(gb, ref["true_b"]) < 1e-4
    assert rel(gw, ref["true_w"]) < 1e-4
    assert stats.backward is not None and stats.backward.all_converged
    assert int(stats.backward.iterations.max()) > 1


def test_implicit_diff_matches_finite_differences(linear_contraction, target):
    w, b = linear_contraction
    _, gb, _ = run(ImplicitDiff("anderson", tol=1e-12, max_iter=500), w, b, target)

    def loss_of(bb):
        u = torch.linalg.solve(torch.eye(w.shape[0], dtype=w.dtype) - w, bb.T).T
        return 0.5 * ((u - target) ** 2).sum()

    eps = 1e-6
    direction = torch.randn_like(b)
    fd = (loss_of(b + eps * direction) - loss_of(b - eps * direction)) / (2 * eps)
    assert abs(float((gb * direction).sum() - fd)) < 1e-4 * abs(float(fd))


def test_jfb_equals_analytic_jfb_formula_and_is_a_descent_direction(linear_contraction, target):
    w, b = linear_contraction
    gw, gb, _ = run(JFB(), w, b, target)
    ref = analytic(w, b, target)
    assert rel(gb, ref["jfb_b"]) < 1e-6
    assert rel(gw, ref["jfb_w"]) < 1e-6
    cosine = torch.nn.functional.cosine_similarity(gb.flatten(), ref["true_b"].flatten(), dim=0)
    assert float(cosine) > 0


def test_jfbk_approaches_true_gradient_as_k_grows(linear_contraction, target):
    w, b = linear_contraction
    ref = analytic(w, b, target)["true_b"]
    errors = [rel(run(JFBk(k), w, b, target)[1], ref) for k in (1, 10, 50, 400)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6
    # JFBk(1) is JFB.
    assert rel(run(JFBk(1), w, b, target)[1], run(JFB(), w, b, target)[1]) < 1e-12


def test_unrolled_with_large_k_matches_implicit_diff(linear_contraction, target):
    w, b = linear_contraction
    _, g_unrolled, stats = run(Unrolled(600), w, b, target)
    _, g_implicit, _ = run(ImplicitDiff(tol=1e-12, max_iter=1000), w, b, target)
    assert rel(g_unrolled, g_implicit) < 1e-6
    assert stats.iterations.eq(600).all()


def test_inference_runs_only_the_solver(linear_contraction):
    w, b = linear_contraction
    calls = {"n": 0}

    def f(u):
        calls["n"] += 1
        return u @ w.T + b

    for strategy in (JFB(), JFBk(3), ImplicitDiff(), Unrolled(7)):
        calls["n"] = 0
        with torch.no_grad():
            _, stats = fixed_point(f, torch.zeros_like(b), Anderson(tol=1e-6, max_iter=500), strategy)
        assert calls["n"] == stats.evaluations


def test_make_gradient_by_name():
    assert isinstance(make_gradient("jfbk", k=3), JFBk)
    with pytest.raises(ValueError, match="unknown gradient"):
        make_gradient("adjoint")
    with pytest.raises(ValueError, match="k >= 1"):
        JFBk(0)


def test_implicit_diff_refuses_tol_it_would_ignore():
    with pytest.raises(ValueError, match="set them on the instance"):
        ImplicitDiff(Picard(), tol=1e-10)
    backward = ImplicitDiff(Picard(tol=1e-6, max_iter=7)).backward_solver()
    assert (backward.tol, backward.max_iter) == (1e-6, 7)  # what the backward solve uses
    backward = ImplicitDiff("Picard").backward_solver()  # names in any case, as make_solver takes them
    assert isinstance(backward, Picard) and (backward.tol, backward.max_iter) == (1e-4, 50)


def test_implicit_diff_fields_edited_after_construction_take_effect(linear_contraction, target):
    w, b = linear_contraction
    strategy = ImplicitDiff("picard", tol=1e-2, max_iter=3)
    strategy.tol, strategy.max_iter = 1e-12, 2000  # used to be ignored: the solver was built once
    _, gb, stats = run(strategy, w, b, target)
    assert stats.backward.all_converged and int(stats.backward.iterations.max()) > 3
    assert rel(gb, analytic(w, b, target)["true_b"]) < 1e-6
    # The repr round-trips (it repeated the instance's tol beside it, which the constructor refuses).
    assert dataclasses.replace(ImplicitDiff(Picard(tol=1e-6))).backward_solver().tol == 1e-6
    for settings, message in (
        ({"tol": -1.0}, "ImplicitDiff tol must be a finite number > 0, got -1.0"),
        ({"max_iter": 0}, "ImplicitDiff max_iter must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=message):  # at construction, not inside loss.backward()
            ImplicitDiff(**settings)


def test_jfb_is_not_a_descent_direction_for_every_contraction():
    # README: the descent guarantee needs dT/dtheta well conditioned too. T(u) = W u + B theta with
    # W = [[0, 0.9], [0.9, 0]] (a contraction: ||W|| = 0.9) and B = diag(1, 0.01): at theta = 0,
    # u* = 0 and dL/du = -target = v, JFB's gradient B^T v and the true B^T (I - W)^-T v point apart.
    w = torch.tensor([[0.0, 0.9], [0.9, 0.0]], dtype=torch.float64)
    basis = torch.diag(torch.tensor([1.0, 0.01], dtype=torch.float64))
    target = torch.tensor([[-0.1, 1.0]], dtype=torch.float64)

    def loss_and_grad(strategy, theta):
        theta = theta.clone().requires_grad_()
        u0 = torch.zeros(1, 2, dtype=torch.float64)
        u, _ = fixed_point(lambda u: u @ w.T + theta @ basis.T, u0, Anderson(tol=1e-12, max_iter=500), strategy)
        loss = 0.5 * ((u - target) ** 2).sum()
        loss.backward()
        return float(loss), theta.grad

    theta = torch.zeros(1, 2, dtype=torch.float64)
    loss, jfb = loss_and_grad(JFB(), theta)
    _, true = loss_and_grad(ImplicitDiff(tol=1e-12, max_iter=500), theta)
    torch.testing.assert_close(jfb, torch.tensor([[0.1, -0.01]], dtype=torch.float64))
    torch.testing.assert_close(true, torch.tensor([[-80 / 19, -0.91 / 19]], dtype=torch.float64))
    assert float((jfb * true).sum()) < 0
    assert loss_and_grad(JFB(), theta - 1e-2 * jfb)[0] > loss  # a step along -JFB raises the loss


def test_implicit_diff_output_takes_in_place_edits(linear_contraction, target):
    w, b = linear_contraction
    w = w.clone().requires_grad_()
    b = b.clone().requires_grad_()
    u, _ = fixed_point(
        lambda u: u @ w.T + b,
        torch.zeros_like(b),
        Anderson(tol=1e-12, max_iter=500),
        ImplicitDiff("anderson", tol=1e-12, max_iter=500),
    )
    u.clamp_(-1e9, 1e9)  # a view output would refuse this
    (0.5 * ((u - target) ** 2).sum()).backward()
    assert rel(b.grad, analytic(w.detach(), b.detach(), target)["true_b"]) < 1e-6


def test_implicit_diff_of_a_map_that_ignores_u():
    # T(u) = b: u* = b and dL/db = dL/du (the Jacobian in u is zero; autograd sees no path to u).
    b = torch.randn(2, 3, requires_grad=True)
    u, stats = fixed_point(lambda u: b * 1.0, torch.zeros(2, 3), Picard(tol=1e-8), ImplicitDiff("picard"))
    u.sum().backward()
    assert torch.equal(b.grad, torch.ones(2, 3))
    assert stats.backward is not None and stats.backward.all_converged


def test_unrolled_and_lipschitz_on_one_dimensional_iterates():
    b = torch.ones(4, requires_grad=True)
    u, stats = fixed_point(lambda u: 0.5 * u + b, torch.zeros(4), Picard(tol=1e-6), Unrolled(30))
    assert torch.allclose(u, torch.full((4,), 2.0)) and stats.trace.shape == (30, 4)
    from jfb_inverse.implicit import lipschitz_estimate

    u = torch.rand(4, dtype=torch.float64)
    assert torch.allclose(lipschitz_estimate(lambda u: 0.5 * u, u), torch.full((4,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("strategy", [JFB(), JFBk(k=2), ImplicitDiff("picard", tol=1e-8, max_iter=300)])
def test_spectral_norm_weights_are_fixed_within_a_training_solve(strategy):
    # torch's spectral norm runs a power-iteration step at every forward in training mode; within a
    # solve T must be one map, so the weight is computed once for the whole no-grad solve, and
    # again (with autograd) for the tracked applications after it.
    torch.manual_seed(0)
    layer = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(6, 6, bias=False))
    layer.train()
    calls = [0]
    layer.parametrizations.weight[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    b = torch.randn(3, 6)
    fn = lambda u: 0.8 * layer(u) + b  # noqa: E731 - a contraction: ||0.8 W|| = 0.8
    u, stats = fixed_point(fn, torch.zeros(3, 6), Picard(tol=1e-6, max_iter=300), strategy)
    tracked = stats.evaluations - int(stats.iterations.max())
    assert stats.all_converged and int(stats.iterations.max()) > 5
    assert calls[0] == 1 + tracked  # once for the solve, once per tracked application
    u.sum().backward()
    assert float(layer.parametrizations.weight.original.grad.abs().sum()) > 0


def test_implicit_diff_warns_when_its_backward_solve_does_not_converge():
    # T(u) = 0.99 u + x: the exact gradient of sum(u*) is 1 / 0.01 = 100 per entry; 50 Picard steps of
    # the adjoint reach about 40, which came back without a word.
    from jfb_inverse.implicit import Anderson, ImplicitDiff, fixed_point

    x = torch.ones(2, 3, requires_grad=True)
    u, _ = fixed_point(
        lambda u: 0.99 * u + x, torch.zeros(2, 3), Anderson(tol=1e-6, max_iter=200), ImplicitDiff("picard")
    )
    with pytest.warns(RuntimeWarning, match="ImplicitDiff: the backward solve did not converge"):
        u.sum().backward()
    assert float(x.grad.max()) < 50  # the inexact gradient the warning is about
