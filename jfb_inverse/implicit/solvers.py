"""Fixed-point solvers: find ``u* = f(u*)`` without building an autograd graph.

Every solver is a small object with one method, ``solve(f, u0) -> (u*, SolverStats)``, so the
network and the gradient strategies never care which one runs.

Residual: ``r_k = ||f(u_k) - u_k|| / ||f(u_k)||`` per sample. For Picard with ``alpha = 1`` this is
``||u_{k+1} - u_k|| / ||u_{k+1}||``; it agrees with the ratio over ``||u_k||`` to first order near
the fixed point and stays defined for a zero start.

Stopping (``stop``):
- ``"batch"`` (default): the whole batch iterates until every sample has had ``r_k <= tol`` in
  some iteration, or ``max_iter``; each sample returns its best iterate (residuals near float32's
  floor bounce, so an iteration with every sample under ``tol`` at once may never come).
- ``"auto"``: ``"sample"`` where the stop flags are read at once (the CPU), else ``"batch"``.
- ``"sample"``: a sample that reaches ``tol`` is frozen (no further updates, its iteration count
  stops) while the others go on. The map is evaluated on the full batch, unless it can be applied
  to some of its samples only (a :class:`SampleSubsetMap`, with an ``on_samples(u, index)``
  method): then, on the CPU (where the solver reads the stop flags at once anyway), only the
  samples still iterating are computed. Each sample's iterates are those of a batch-wide solve
  (Picard and Anderson treat every sample on its own), so only the work changes: in a batch of
  deblurring solves most samples converge well before the slowest one, which sets the batch's
  count.

What a solve returns: the step taken from the ``u_k`` of the smallest residual ``r_k`` seen, per
sample (never a diverged one): ``f(u_k)``, or ``(1 - alpha) u_k + alpha f(u_k)`` for a relaxed
Picard; ``stats.residual`` is that ``r_k``, the residual of the step that made the returned value.
For a map that contracts by ``rho`` the returned value's own residual is then about
``(1 - alpha + alpha rho) r_k`` or less (``rho r_k`` for ``alpha = 1``): the report is conservative
(for a map that expands it is not). A solve
that does not reach ``tol`` says so in ``stats.converged``.

``f`` must return a tensor of ``u``'s shape and dtype (checked on its first call); iterates are
floating point, and Anderson's small least-squares solve needs float32 or float64 ones.

On CUDA the stop test reads the previous iteration's flags (``lagged_stop``, see ``_StopCheck``):
the host never waits for the device inside the loop, and a solve may run one iteration more.
``cuda_graph=True`` (CUDA only, off by default) records ``f`` once per solve as a CUDA graph and
replays it (see ``_GraphedMap``): for small images, where launching kernels costs more than running
them.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from jfb_inverse.implicit.stats import SolverStats, residual_from_norms

FixedPointMap = Callable[[Tensor], Tensor]
StopRule = Literal["batch", "sample", "auto"]


@runtime_checkable
class SampleSubsetMap(Protocol):
    """A fixed-point map that can also be applied to some samples of a batch only.

    ``on_samples(u, index)`` must equal ``f(u)[index]`` for the full batch ``u`` and a 1-D tensor of
    sample indices, while skipping (most of) the work for the other samples. Solvers with
    ``stop="sample"`` use it to compute only the samples still iterating.
    """

    def __call__(self, u: Tensor) -> Tensor: ...

    def on_samples(self, u: Tensor, index: Tensor) -> Tensor: ...


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _norms(t: Tensor) -> Tensor:
    """Per-sample Euclidean norm over all but the batch dimension."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


class _BestIterate:
    """Keeps, per sample, the iterate with the smallest residual seen so far.

    ``copy=False`` (Picard): the best iterate is a reference to a candidate (no copy in the common,
    monotone case, found by one host read). ``copy=True`` (Anderson): candidates live in buffers that
    get overwritten, so the best iterate is kept in an own buffer, updated in place. ``lazy=True``:
    no host read at all (a GPU would stall on it): a ``torch.where`` per update instead.
    """

    def __init__(self, u: Tensor, copy: bool = False, lazy: bool = False) -> None:
        self.copy = copy
        self.lazy = lazy
        self.value = u.clone() if copy else u
        dtype = u.dtype if u.is_floating_point() else torch.float32
        self.residual = torch.full((u.shape[0],), float("inf"), device=u.device, dtype=dtype)

    def update(self, candidate: Tensor, residual: Tensor, active: Tensor | None = None) -> None:
        """Take the improved samples of ``candidate``; with ``active`` (per-sample stopping), only
        those of the samples still iterating: a frozen sample's candidate may be the non-finite
        iterate that froze it.

        ``residual`` is in ``[0, inf]`` (see ``residual_from_norms``); the strict ``<`` against a
        start of ``inf`` then never takes a diverged candidate, in one kernel (ties keep the earlier
        iterate)."""
        improved = residual < self.residual
        if active is not None:
            improved &= active
        if self.copy:
            torch.where(_expand(improved, candidate), candidate, self.value, out=self.value)
            torch.where(improved, residual, self.residual, out=self.residual)
            return
        if self.lazy:
            self.value = torch.where(_expand(improved, candidate), candidate, self.value)
            self.residual = torch.where(improved, residual, self.residual)
            return
        all_improved, any_improved = torch.stack((improved.all(), improved.any())).tolist()
        if all_improved:
            # The common, monotone case: no new tensor.
            self.value = candidate
            self.residual = residual
        elif any_improved:
            self.value = torch.where(_expand(improved, candidate), candidate, self.value)
            self.residual = torch.where(improved, residual, self.residual)


class _StopCheck:
    """Whether every sample has finished, read without stalling a GPU.

    On the CPU the flags are read at once. On CUDA a read in every iteration would make the host
    wait for the device, which then idles while the host queues the next iteration's kernels; so
    (``lagged``) the flag is copied to pinned host memory asynchronously and read one iteration
    later: a solve runs at most one iteration more than needed, never fewer.
    """

    def __init__(self, device: torch.device, lagged: bool | None = None) -> None:
        self.lagged = device.type == "cuda" if lagged is None else lagged
        self._host: Tensor | None = None
        self._event: torch.cuda.Event | None = None

    def __call__(self, finished: Tensor) -> bool:
        """Record this iteration's ``finished`` flags; return whether to stop now."""
        flag = finished.all()
        if not self.lagged:
            return bool(flag)
        stop = False
        if self._host is None:
            on_cuda = flag.device.type == "cuda"
            self._host = torch.empty((), dtype=torch.bool, pin_memory=on_cuda)
            self._event = torch.cuda.Event() if on_cuda else None
        else:  # the previous iteration's flag
            if self._event is not None:
                self._event.synchronize()
            stop = bool(self._host)
        self._host.copy_(flag, non_blocking=self._event is not None)
        if self._event is not None:
            self._event.record(torch.cuda.current_stream(flag.device))
        return stop


class _GraphedMap:
    """``f`` replayed from a CUDA graph: one launch per application instead of one per kernel.

    Recorded once per solve, so a graph never outlives the measurements, weights and physics it
    read. Call 1 runs ``f`` eagerly on a side stream (the warm-up CUDA graphs need: cuDNN, cuBLAS
    and cuFFT set up their plans and workspaces there); call 2 records ``f`` on a static input and
    replays it; later calls copy their input in and replay. Each call returns a copy of the graph's
    output buffer, which the next replay overwrites (Picard's next input is this call's output).

    A map that cannot be recorded (it reads a value on the host, say) runs eagerly from then on,
    with a warning that names the error: the solve's result is the same, only slower. The solver
    remembers the failure and does not try again in its later solves.
    """

    def __init__(self, f: FixedPointMap) -> None:
        self.f = f
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.static_in: Tensor | None = None
        self.static_out: Tensor | None = None

    def __call__(self, u: Tensor) -> Tensor:
        self.calls += 1
        if self.failed:
            return self.f(u)
        if self.calls == 1:
            current = torch.cuda.current_stream(u.device)
            side = torch.cuda.Stream(u.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out = self.f(u)
            current.wait_stream(side)
            out.record_stream(current)  # used on the current stream from here: no early reuse
            return out
        if self.graph is None:
            return self._record(u)
        assert self.static_in is not None and self.static_out is not None
        self.static_in.copy_(u)
        self.graph.replay()
        return self.static_out.clone()

    def _record(self, u: Tensor) -> Tensor:
        self.static_in = u.clone()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream(u.device)
        try:
            # On u's device (a capture stream of the current device would record nothing of f).
            with torch.cuda.device(u.device), torch.cuda.graph(graph):
                self.static_out = self.f(self.static_in)
        except Exception as exc:  # any failure to record: fall back to eager calls
            # The graph context leaves its capture stream current when ending the capture fails.
            torch.cuda.set_stream(stream)
            torch.cuda.synchronize(u.device)
            self.failed = True
            self.static_in = self.static_out = None
            warnings.warn(
                f"cuda_graph: the map could not be recorded as a CUDA graph ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); it runs eagerly in this solver from now on "
                "(same result, slower)",
                RuntimeWarning,
                stacklevel=4,
            )
            return self.f(u)
        self.graph = graph
        graph.replay()  # recording runs nothing: this is the call's result
        return self.static_out.clone()


def _maybe_graphed(f: FixedPointMap, u0: Tensor, cuda_graph: bool) -> FixedPointMap:
    """``f`` as a :class:`_GraphedMap` when asked for and the iterates live on a CUDA device."""
    if cuda_graph and u0.device.type == "cuda":
        return _GraphedMap(f)
    return f


class _Trace:
    """The residual of every iteration, written into one buffer allocated up front.

    Why not a list of per-iteration tensors: small tensors that stay alive for the whole solve,
    allocated between the large transient activations of each iteration, pin glibc's heap so that
    freed memory cannot be reused or trimmed; the resident memory of a no-grad solve then grows
    with the number of iterations (seen on CT: +2 MB per iteration).
    """

    def __init__(self, max_iter: int) -> None:
        self.max_iter = max_iter
        self.buffer: Tensor | None = None
        self.count = 0

    def append(self, res: Tensor) -> None:
        if self.buffer is None:
            self.buffer = res.new_empty(self.max_iter, *res.shape)
        self.buffer[self.count] = res
        self.count += 1

    def tensor(self, like: Tensor) -> Tensor:
        """The ``(iterations, B)`` trace (an empty one when nothing ran)."""
        if self.buffer is None:
            return like.new_zeros(0, like.shape[0])
        return self.buffer[: self.count].clone()


def _validate(u0: Tensor, tol: float, max_iter: int) -> None:
    check_iterate(u0)
    check_bounds("the solver", tol, max_iter)  # again: a field may have been edited since __post_init__


def check_iterate(u0: object) -> None:
    """A starting point a solver can iterate: a non-empty floating-point tensor with a batch dimension."""
    if not isinstance(u0, Tensor):
        raise ValueError(f"u0 must be a torch.Tensor, got {type(u0).__name__}; convert with torch.as_tensor(u0)")
    if u0.dim() < 1:
        raise ValueError(f"u0 must have a leading batch dimension, got shape {tuple(u0.shape)}; u0[None] adds one")
    if u0.shape[0] == 0:
        raise ValueError(f"u0 is an empty batch (shape {tuple(u0.shape)}); pass at least one sample")
    if not u0.is_floating_point():
        raise ValueError(f"u0 must be a floating-point tensor, got {u0.dtype}; cast it, e.g. u0.float()")


def check_bounds(owner: str, tol: float, max_iter: int) -> None:
    """``tol`` finite and positive (an infinite one reports a diverged solve as converged), ``max_iter >= 1``."""
    if not 0 < tol < float("inf"):
        raise ValueError(f"{owner} tol must be a finite number > 0, got {tol}")
    if max_iter < 1:
        raise ValueError(f"{owner} max_iter must be >= 1, got {max_iter}")


def check_output(fu: Tensor, u: Tensor) -> None:
    """``f(u)`` must be an iterate like ``u``: a broadcast shape or another dtype would be silently
    cast or broadcast into the solver's buffers."""
    if not isinstance(fu, Tensor):
        raise ValueError(f"the map returned a {type(fu).__name__}; f must return a torch.Tensor shaped like its input")
    if fu.shape != u.shape or fu.dtype != u.dtype:
        raise ValueError(
            f"the map returned {fu.dtype} of shape {tuple(fu.shape)} for an iterate of {u.dtype} and shape "
            f"{tuple(u.shape)}; f must return its input's shape and dtype (cast u0 to the dtype f computes in)"
        )


class _ActiveSubset:
    """Which samples a per-sample solve still computes, when ``f`` can skip the others.

    Used only where the stop flags are read on the host at once (the CPU by default): finding the
    indices of the active samples is a host read, which on a GPU would stall the loop.
    """

    def __init__(self, f: FixedPointMap, batch: int, enabled: bool) -> None:
        self.f = f if enabled and isinstance(f, SampleSubsetMap) else None
        self.batch = batch
        self.index: Tensor | None = None  # None: every sample is active

    def update(self, active: Tensor) -> None:
        """Record the samples still iterating after this iteration."""
        if self.f is None:
            return
        count = int(active.sum())
        if 0 < count < self.batch:
            self.index = active.nonzero()[:, 0]

    def apply(self, u: Tensor) -> Tensor | None:
        """``f`` on the active samples of ``u``, shape ``(active, ...)``; None when every sample is active."""
        if self.f is None or self.index is None:
            return None
        out = self.f.on_samples(u, self.index)
        expected = (self.index.shape[0], *u.shape[1:])
        if out.shape != expected or out.dtype != u.dtype:
            raise ValueError(
                f"on_samples returned {out.dtype} of shape {tuple(out.shape)} for {expected[0]} sample(s) of an "
                f"iterate of {u.dtype} and shape {tuple(u.shape)}; it must return f(u)[index]"
            )
        return out


def _per_sample(stop: StopRule, check: _StopCheck) -> bool:
    """Whether a solve stops each sample on its own: ``"auto"`` does where the stop flags are read at
    once (the CPU, where only the samples still iterating are then computed) and not where they are
    read one iteration late (CUDA, where freezing samples would add work, not save it)."""
    _check_stop(stop)
    return stop == "sample" or (stop == "auto" and not check.lagged)


def check_settings(owner: str, integers: dict[str, object], reals: dict[str, object]) -> None:
    """Settings of the right type, in one line naming the setting: a float ``max_iter`` or a string
    ``tol`` would otherwise fail as an obscure TypeError deep inside a solve."""
    for name, value in integers.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{owner} {name} must be an integer, got {value!r}")
    for name, value in reals.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{owner} {name} must be a number, got {value!r}")


def _check_stop(stop: str) -> None:
    if stop not in ("batch", "sample", "auto"):
        raise ValueError(f"unknown stop rule {stop!r}; choose 'batch', 'sample' or 'auto'")


def _finished(res: Tensor, tol: float) -> Tensor:
    """Converged or blown up (``res`` is in ``[0, inf]``): nothing more to gain for that sample."""
    return (res <= tol) | (res == float("inf"))


def _finish(
    best: _BestIterate,
    trace: _Trace,
    iterations: Tensor,
    evaluations: int,
    tol: float,
) -> tuple[Tensor, SolverStats]:
    residual = best.residual
    stats = SolverStats(
        iterations=iterations,
        residual=residual,
        converged=residual <= tol,
        trace=trace.tensor(residual),
        evaluations=evaluations,
        tol=tol,
    )
    return best.value, stats


class FixedPointSolver(ABC):
    """Interface: ``solve(f, u0)`` returns the fixed point of ``f`` and its statistics."""

    tol: float
    max_iter: int
    cuda_graph: bool = False
    # A map this solver could not record as a CUDA graph: recorded again at every solve, it failed
    # again, at the cost of a capture attempt, a device sync and a warning per solve.
    _graph_failed = False

    @abstractmethod
    def solve(self, f: FixedPointMap, u0: Tensor) -> tuple[Tensor, SolverStats]:
        """Iterate ``f`` from ``u0`` until the relative residual is below ``tol``."""

    def _graphed(self, f: FixedPointMap, u0: Tensor) -> FixedPointMap:
        """``f`` replayed from a CUDA graph where asked for, unless an earlier solve failed to record."""
        return _maybe_graphed(f, u0, self.cuda_graph and not self._graph_failed)

    def _remember_graph_failure(self, f: FixedPointMap) -> None:
        if isinstance(f, _GraphedMap) and f.failed:
            self._graph_failed = True


@dataclass
class Picard(FixedPointSolver):
    """Picard / Krasnoselskii-Mann iteration ``u <- (1 - alpha) u + alpha f(u)``.

    Cheap per step and safe for any contraction (and, with ``alpha < 1``, for any
    non-expansive ``f``), but linear convergence: slow when the contraction factor is near 1.
    """

    alpha: float = 1.0
    tol: float = 1e-4
    max_iter: int = 50
    stop: StopRule = "batch"
    lagged_stop: bool | None = None  # None: on CUDA (see _StopCheck)
    cuda_graph: bool = False  # replay f from a CUDA graph (CUDA only, see _GraphedMap)

    def __post_init__(self) -> None:
        check_settings("Picard", {"max_iter": self.max_iter}, {"alpha": self.alpha, "tol": self.tol})
        check_bounds("Picard", self.tol, self.max_iter)
        _check_stop(self.stop)
        if not 0 < self.alpha <= 1:
            raise ValueError(f"Picard alpha must be in (0, 1], got {self.alpha}")

    @torch.no_grad()
    def solve(self, f: FixedPointMap, u0: Tensor) -> tuple[Tensor, SolverStats]:
        """Run the (relaxed) Picard iteration from ``u0``."""
        _validate(u0, self.tol, self.max_iter)
        f = self._graphed(f, u0)
        u = u0
        batch = u.shape[0]
        active = torch.ones(batch, dtype=torch.bool, device=u.device)
        iterations = torch.zeros(batch, dtype=torch.long, device=u.device)
        check = _StopCheck(u.device, self.lagged_stop)
        best = _BestIterate(u, lazy=check.lagged)
        trace = _Trace(self.max_iter)
        evaluations = 0
        per_sample = _per_sample(self.stop, check)
        subset = _ActiveSubset(f, batch, per_sample and not check.lagged)
        diff: Tensor | None = None  # reused for f(u) - u: no allocation per iteration
        for _ in range(self.max_iter):
            part = subset.apply(u)
            # With a subset, the frozen samples keep u (their update is masked out below).
            fu = f(u) if part is None else u.index_copy(0, subset.index, part)  # type: ignore[arg-type]
            if evaluations == 0:
                check_output(fu, u)
            evaluations += 1
            if diff is None or diff.shape != fu.shape or diff.dtype != fu.dtype:
                diff = torch.empty_like(fu, memory_format=torch.contiguous_format)
            torch.sub(fu, u, out=diff)
            res = residual_from_norms(_norms(diff), _norms(fu))
            nxt = fu if self.alpha == 1.0 else torch.lerp(u, fu, self.alpha)
            if per_sample:
                nxt = torch.where(_expand(active, nxt), nxt, u)
                res = torch.where(active, res, best.residual)
                iterations += active
            trace.append(res)
            best.update(nxt, res, active if per_sample else None)
            finished = _finished(res, self.tol) | (best.residual <= self.tol)  # see Anderson
            u = nxt
            if per_sample:
                # Stop once every sample is frozen: a frozen sample's reported residual is its best
                # one, which for a sample frozen by a non-finite step is above tol.
                active = active & ~finished
                finished = ~active
            if check(finished):
                break
            subset.update(active)
        if not per_sample:
            iterations.fill_(evaluations)  # every sample ran every iteration
        self._remember_graph_failure(f)
        return _finish(best, trace, iterations, evaluations, self.tol)


@dataclass
class Anderson(FixedPointSolver):
    """Anderson acceleration (type II) with history ``m``, damping ``beta`` and regularisation ``lam``.

    Each step mixes the last ``m`` iterates with weights from a small least-squares problem
    (solved for the whole batch at once). ``lam`` is relative to the mean squared residual, so it
    does not depend on the image scale. A singular or non-finite system falls back to a plain
    Picard step for that sample instead of failing. Typically needs far fewer applications of
    ``f`` than Picard when the contraction factor is close to 1.
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    tol: float = 1e-4
    max_iter: int = 50
    stop: StopRule = "batch"
    lagged_stop: bool | None = None  # None: on CUDA (see _StopCheck)
    cuda_graph: bool = False  # replay f from a CUDA graph (CUDA only, see _GraphedMap)

    def __post_init__(self) -> None:
        check_settings(
            "Anderson", {"m": self.m, "max_iter": self.max_iter}, {"beta": self.beta, "lam": self.lam, "tol": self.tol}
        )
        check_bounds("Anderson", self.tol, self.max_iter)
        _check_stop(self.stop)
        if self.m < 1:
            raise ValueError(f"Anderson history m must be >= 1, got {self.m}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"Anderson damping beta must be in (0, 1], got {self.beta}")
        if self.lam < 0:
            raise ValueError(f"Anderson regularisation lam must be >= 0, got {self.lam}")

    @torch.no_grad()
    def solve(self, f: FixedPointMap, u0: Tensor) -> tuple[Tensor, SolverStats]:
        """Run Anderson acceleration from ``u0``."""
        _validate(u0, self.tol, self.max_iter)
        f = self._graphed(f, u0)
        if u0.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"Anderson needs float32 or float64 iterates (its mixing weights come from a small linear "
                f"solve), got {u0.dtype}; cast u0, or use Picard"
            )
        shape = u0.shape
        batch = shape[0]
        m = self.m
        x0 = u0.reshape(batch, -1)
        # History buffers, slot-major (m, B, N): a slot is one contiguous batch, handed to f without
        # a copy. R = F - X (the residuals) and their Gram matrix are updated one slot per iteration,
        # so an iteration costs O(m N) and allocates nothing of the image size.
        X = x0.new_zeros(m, batch, x0.shape[1])  # noqa: N806 - maths notation
        F = torch.zeros_like(X)  # noqa: N806
        R = torch.zeros_like(X)  # noqa: N806
        gram = x0.new_zeros(batch, m, m)
        check = _StopCheck(u0.device, self.lagged_stop)
        per_sample = _per_sample(self.stop, check)
        mix = x0.new_empty(batch, x0.shape[1]) if (self.beta != 1.0 or per_sample) else None
        mix_x = x0.new_empty(batch, x0.shape[1]) if self.beta != 1.0 else None

        active = torch.ones(batch, dtype=torch.bool, device=u0.device)
        iterations = torch.zeros(batch, dtype=torch.long, device=u0.device)
        best = _BestIterate(u0, copy=True)
        trace = _Trace(self.max_iter)
        subset = _ActiveSubset(f, batch, per_sample and not check.lagged)
        # Bordered system [[0, 1^T], [1, G G^T + lam I]] [mu; a] = [1; 0] (sum of weights = 1).
        H = x0.new_zeros(batch, m + 1, m + 1)  # noqa: N806
        H[:, 0, 1:] = 1
        H[:, 1:, 0] = 1
        rhs = x0.new_zeros(batch, m + 1, 1)
        rhs[:, 0] = 1
        plain_steps = torch.eye(m, device=x0.device, dtype=x0.dtype)  # row i: all weight on slot i

        slots = m
        X[0] = x0
        prev = 0
        evaluations = 0
        for k in range(self.max_iter):
            cur = k % slots
            if k == 1:  # one iterate: a plain (damped) step
                if self.beta == 1.0:
                    X[cur] = F[prev]
                else:
                    torch.lerp(X[prev], F[prev], self.beta, out=X[cur])
                if per_sample:
                    torch.where(active[:, None], X[cur], X[prev], out=X[cur])
            elif k > 1:
                n = min(k, slots)
                sub = H[:, 1 : n + 1, 1 : n + 1]
                sub.copy_(gram[:, :n, :n])
                scale = gram[:, :n, :n].diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
                sub.diagonal(dim1=1, dim2=2).add_((self.lam * scale)[:, None])
                sol, info = torch.linalg.solve_ex(H[:, : n + 1, : n + 1], rhs[:, : n + 1])
                weights = sol[:, 1 : n + 1, 0]
                # A singular or non-finite system: a plain step for that sample (no host sync). The
                # largest |weight| is finite exactly when every weight is (NaN fails `<`).
                good = (info == 0) & (weights.abs().amax(dim=1) < float("inf"))
                weights = torch.where(good[:, None], weights, plain_steps[prev, :n])
                target = X[cur] if mix is None else mix
                torch.bmm(weights[:, None], F[:n].transpose(0, 1), out=target[:, None])
                if mix_x is not None:
                    torch.bmm(weights[:, None], X[:n].transpose(0, 1), out=mix_x[:, None])
                    target.mul_(self.beta).add_(mix_x, alpha=1 - self.beta)
                if per_sample:
                    torch.where(active[:, None], target, X[prev], out=target)
                if mix is not None:
                    X[cur] = target
            part = subset.apply(X[cur].view(shape))
            if part is None:
                fu = f(X[cur].view(shape))
                if evaluations == 0:
                    check_output(fu, u0)
                F[cur].view(shape).copy_(fu)
            else:  # the frozen samples get a zero residual (their update is masked out anyway)
                F[cur].copy_(X[cur])
                F[cur].view(shape).index_copy_(0, subset.index, part)
            evaluations += 1
            torch.sub(F[cur], X[cur], out=R[cur])
            valid = min(k + 1, slots)
            # (1 x N) @ (N x valid) per sample: the fast bmm layout (a matrix-vector bmm is ~20x slower).
            row = torch.bmm(R[cur][:, None, :], R[:valid].permute(1, 2, 0))[:, 0, :]
            gram[:, cur, :valid] = row
            gram[:, :valid, cur] = row
            res = residual_from_norms(gram[:, cur, cur].clamp_min(0).sqrt(), _norms(F[cur]))
            if per_sample:
                res = torch.where(active, res, best.residual)
                iterations += active
            trace.append(res)
            prev = cur
            best.update(F[cur].view(shape), res, active if per_sample else None)
            # A sample that has been under tol is done: its best iterate is what the solve returns.
            # Waiting for every sample to be under tol in the same iteration ran to max_iter where
            # residuals bounce near float32's floor (each sample under tol at another iteration).
            finished = _finished(res, self.tol) | (best.residual <= self.tol)
            if per_sample:
                active = active & ~finished
                finished = ~active  # as in Picard
            if check(finished):
                break
            subset.update(active)
        if not per_sample:
            iterations.fill_(evaluations)
        self._remember_graph_failure(f)
        return _finish(best, trace, iterations, evaluations, self.tol)


def make_solver(name: str, **kwargs: float | int | str) -> FixedPointSolver:
    """Build a solver by name (``"picard"`` or ``"anderson"``); keyword arguments are its fields."""
    solvers: dict[str, type[FixedPointSolver]] = {"picard": Picard, "anderson": Anderson}
    if not isinstance(name, str):
        raise ValueError(f"solver name must be a string, got {name!r}; choose one of {sorted(solvers)}")
    try:
        cls = solvers[name.lower()]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(solvers)}") from None
    return cls(**kwargs)  # type: ignore[arg-type]
