"""Property-based validation of problem definitions (issue 6): any values either resolve to a valid
:class:`ProblemConfig` or fail with a one-line :class:`ConfigError`, never another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jfb_inverse.errors import ConfigError
from jfb_inverse.problems import ProblemConfig, resolve_config
from jfb_inverse.problems.config import DataConfig, ModelConfig, NoiseConfig, SolverConfig, TrainingConfig

SECTIONS = {
    "training": TrainingConfig,
    "noise": NoiseConfig,
    "solver": SolverConfig,
    "data": DataConfig,
    "model": ModelConfig,
}

# Valid literal choices, so that some examples get past validation and exercise the accept path.
CHOICES = ["gaussian", "poisson", "anderson", "picard", "jfb", "jfbk", "implicit", "unrolled", "builtin",
           "phantoms", "folder", "mixed", "prox", "gradient", "ffpn", "filtered", "tikhonov", "adjoint", "auto",
           "cpu", "cuda", "fp32", "bf16", "fp16"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, 1, 2, 3, 16, 64, -1, 10**30, -(10**30), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1e-3, 0.5, float("nan"), float("inf"), -float("inf")]),
    st.sampled_from(CHOICES),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def section(model) -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(sorted(model.model_fields)), st.text(max_size=10))
    return st.dictionaries(keys, values, max_size=5)


overrides = st.fixed_dictionaries(
    {},
    optional={
        **{name: st.one_of(section(model), values) for name, model in SECTIONS.items()},
        "problem": st.one_of(st.just("deblur"), values),
    },
)
junk = st.one_of(st.just({}), st.just({}), st.just({}), st.dictionaries(st.text(max_size=8), values, max_size=2))
overrides = st.tuples(junk, overrides).map(lambda pair: {**pair[0], **pair[1]})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides)
def test_any_values_resolve_or_fail_with_one_line_config_error(ov):
    try:
        cfg = resolve_config("deblur", overrides=ov)
    except ConfigError as exc:
        message = str(exc)
        assert message and len(message.splitlines()) == 1, message
        event("refused")
        return
    event("accepted")
    assert isinstance(cfg, ProblemConfig)
    # What validation accepted obeys the documented constraints.
    t = cfg.training
    assert t.steps >= 1 and t.batch_size >= 1 and t.lr > 0 and t.checkpoint_every >= 1
    assert cfg.noise.sigma >= 0 and not math.isnan(cfg.noise.sigma)
    assert cfg.data.patch_size >= 16 and cfg.data.channels in (1, 3)
    assert cfg.solver.tol > 0 and cfg.solver.max_iter >= 1 and 0 < cfg.solver.alpha <= 1
    # Checkpoints store the definition as JSON: it must come back the same (so no inf/NaN anywhere).
    assert all(math.isfinite(v) for v in _floats(cfg.model_dump()))
    assert ProblemConfig.model_validate_json(cfg.model_dump_json()) == cfg


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _floats(item)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(SECTIONS), "operator"]), values, max_size=3))
def test_sections_of_any_type(ov):
    """A section that is not a table (``training = 5``, ``operator = 5``) fails cleanly too."""
    try:
        resolve_config("deblur", overrides=ov)
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1


@pytest.mark.parametrize("operator", [5, None, 1.5])
def test_operator_section_of_another_type(operator):
    with pytest.raises(ConfigError):
        resolve_config("deblur", overrides={"operator": operator})


@pytest.mark.parametrize("ov", [{"solver": {"tol": math.inf}}, {"noise": {"sigma": math.inf}}])
def test_infinite_values_are_refused_so_checkpoints_round_trip(ov):
    with pytest.raises(ConfigError, match="finite"):
        resolve_config("deblur", overrides=ov)


@pytest.mark.parametrize("args", [{"scale": math.inf}, {"taps": [1.0, math.nan]}, {"inner": {"gain": -math.inf}}])
def test_infinite_custom_operator_arguments_are_refused(args):
    # Free-form constructor arguments are not typed floats, so allow_inf_nan does not see them.
    ov = {"operator": {"target": "ops.py:Blur", "args": args}}
    with pytest.raises(ConfigError, match=r"operator\.args\.\w+.* must be a finite number"):
        resolve_config("custom", overrides=ov)
