"""Typed problem definitions, the registry, and the physics they build.

>>> from jfb_inverse.problems import resolve_config
>>> cfg = resolve_config("deblur", overrides={"noise": {"sigma": 0.02}})
>>> cfg.operator.kernel, cfg.noise.sigma
('gaussian', 0.02)
"""

from typing import TYPE_CHECKING, Any

from jfb_inverse.problems.config import (
    BlurOperator,
    CustomOperator,
    DataConfig,
    InpaintingOperator,
    ModelConfig,
    MRIOperator,
    NoiseConfig,
    ProblemConfig,
    SolverConfig,
    SuperResOperator,
    TomographyOperator,
    TrainingConfig,
)
from jfb_inverse.problems.registry import (
    Problem,
    config_from_file_or_problem,
    get_problem,
    list_problems,
    load_config_file,
    register_problem,
    resolve_config,
)

# Loaded on first use (PEP 562): they import deepinv (3 s here), which listing or validating
# problems does not need.
_LAZY = {
    "simulate": "jfb_inverse.problems.noise",
    "build_physics": "jfb_inverse.problems.operators",
    "image_shape_for": "jfb_inverse.problems.operators",
    "register_operator": "jfb_inverse.problems.operators",
}


if TYPE_CHECKING:
    from jfb_inverse.problems.noise import simulate
    from jfb_inverse.problems.operators import build_physics, image_shape_for, register_operator


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    try:  # a submodule, as an attribute of the package (problems.operators, problems.noise, ...)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlurOperator",
    "CustomOperator",
    "DataConfig",
    "InpaintingOperator",
    "MRIOperator",
    "ModelConfig",
    "NoiseConfig",
    "Problem",
    "ProblemConfig",
    "SolverConfig",
    "SuperResOperator",
    "TomographyOperator",
    "TrainingConfig",
    "build_physics",
    "config_from_file_or_problem",
    "get_problem",
    "image_shape_for",
    "list_problems",
    "load_config_file",
    "register_operator",
    "register_problem",
    "resolve_config",
    "simulate",
]
