"""Fitting a run's step count to a time budget (``training.minutes``), so its schedule completes.

A step count takes twice as long on a CPU without native bf16 as on one with it, so "4,300
steps" is 4 minutes on one 2-core machine and 9 on another. With a budget in minutes the run
measures its own speed and sets the number of steps that fit: the cosine learning-rate schedule
then ends (at 5% of the peak) when the time does, instead of being cut off at a high rate by a
hard stop. The speed changes during a run (warm-started solves need 7 iterations early and 12
late in the default deblur run: 43-62 ms a step), so the count is refitted at several points,
each time from the speed since the previous fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Fractions of the budget at which the step count is refitted.
FIT_AT = (0.05, 0.25, 0.5, 0.75, 0.9)


@dataclass
class StepPlan:
    """The number of steps a run plans: ``cap`` (``training.steps``), or fewer under a budget.

    ``update(steps_done, elapsed)`` after every step refits ``planned`` once ``elapsed`` passes
    the next fraction of ``seconds`` (:data:`FIT_AT`): the steps done so far plus as many as the
    remaining time holds at the speed measured since the previous fit (the first fit: since the
    end of the first step), at most ``cap``. Without a budget ``planned`` stays ``cap``.
    """

    cap: int
    seconds: float | None = None
    planned: int = 0
    fits_done: int = 0
    mark_step: int = 0
    mark_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.planned <= 0:
            self.planned = self.cap

    def update(self, steps_done: int, elapsed: float) -> None:
        """Refit ``planned`` if ``elapsed`` (seconds of training) has passed the next fit point."""
        if self.seconds is None:
            return
        if self.fits_done == 0 and self.mark_step == 0 and steps_done == 1:
            # The first step builds the convolutions' kernels and solves cold, so it can take several
            # times as long as a later one (on a GPU, CUDA's start-up too). The first fit measures
            # the speed from the end of it, or a short budget could plan too few steps and end early.
            self.mark_step, self.mark_seconds = 1, elapsed
            return
        due = self.fits_done
        while due < len(FIT_AT) and elapsed >= FIT_AT[due] * self.seconds:
            due += 1
        if due == self.fits_done or steps_done <= self.mark_step:
            return
        self._fit(steps_done, elapsed, (elapsed - self.mark_seconds) / (steps_done - self.mark_step), due)

    def _fit(self, steps_done: int, elapsed: float, per_step: float, fits_done: int) -> None:
        """Plan the steps done plus those the remaining time holds at ``per_step`` seconds each."""
        assert self.seconds is not None
        ahead = int(max(0.0, self.seconds - elapsed) / per_step) if per_step > 0 else self.cap
        self.planned = max(steps_done, min(self.cap, steps_done + ahead))
        self.fits_done, self.mark_step, self.mark_seconds = fits_done, steps_done, elapsed

    @property
    def fitted(self) -> bool:
        """Whether ``planned`` comes from a measured speed (else it is the cap, or no budget is set)."""
        return self.seconds is not None and self.fits_done > 0

    def rebudget(self, seconds: float | None, cap: int, steps_done: int, elapsed: float) -> None:
        """A resume with another budget or cap: plan again now, from the run's average speed so far
        (``steps_done`` steps in ``elapsed`` seconds), so that its next step already follows it."""
        if seconds == self.seconds and cap == self.cap:
            return
        self.seconds, self.cap, self.planned = seconds, cap, cap
        self.fits_done, self.mark_step, self.mark_seconds = 0, 0, 0.0
        if seconds is None or steps_done <= 0 or elapsed <= 0:
            return  # no budget, or no speed measured yet: the first fit will come at 5% of the budget
        self._fit(steps_done, elapsed, elapsed / steps_done, max(1, sum(elapsed >= f * seconds for f in FIT_AT)))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
