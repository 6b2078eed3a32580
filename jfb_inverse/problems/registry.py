"""The problem registry: built-in problems, ``register_problem`` and the ``jfb_inverse.problems`` entry points.

A problem is a name, a one-line description, its default definition and optional presets. A run's
definition is resolved as: problem defaults < preset < config file < command-line overrides, then
validated as a whole (:class:`~jfb_inverse.problems.config.ProblemConfig`).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import tomllib
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from jfb_inverse.errors import ConfigError, UserError
from jfb_inverse.problems.config import (
    BUDGET_STEP_CAP,
    BlurOperator,
    ModelConfig,
    NoiseConfig,
    ProblemConfig,
    unused_fields,
    variants_using,
)

ENTRY_POINT_GROUP = "jfb_inverse.problems"
#: The sections of a whole definition, as a run's problem.toml holds them.
DEFINITION_SECTIONS = tuple(name for name in ProblemConfig.model_fields if name != "problem")


@dataclass(frozen=True)
class Problem:
    """A registered problem: ``defaults`` is a nested dict of :class:`ProblemConfig` fields."""

    name: str
    description: str
    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


_REGISTRY: dict[str, Problem] = {}
_PLUGIN_FAILURES: list[str] = []
_entry_points_loaded = False


def register_problem(
    name: str,
    description: str,
    defaults: Mapping[str, Any] | ProblemConfig | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
) -> Any:
    """Register a problem; with ``defaults`` omitted, decorate a function that returns them.

    Example:
        >>> from jfb_inverse.problems import register_problem
        >>> @register_problem("my-blur", "Box blur of width 7", overwrite=True)
        ... def my_blur():
        ...     return {"operator": {"kind": "blur", "kernel": "box", "size": 7}}
    """

    def add(values: Mapping[str, Any] | ProblemConfig) -> Problem:
        # The built-ins first: registered later, they would collide with a user's overwrite of one
        # of their names (inside builtin's own import this returns the module being imported).
        import jfb_inverse.problems.builtin  # noqa: F401

        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            # The name is typed after --problem and written into files: no spaces, and no ':' (which
            # would read as builtin:NAME or path:Class).
            raise ConfigError(f"problem name {name!r}: use letters, digits, '-', '_' and '.' (e.g. 'my-blur')")
        if not isinstance(description, str):
            raise ConfigError(f"problem {name!r}: the description must be a string, got {type(description).__name__}")
        preset_items = (presets or {}).items() if isinstance(presets or {}, Mapping) else None
        if preset_items is None or not all(isinstance(k, str) and isinstance(v, Mapping) for k, v in preset_items):
            raise ConfigError(
                f"problem {name!r}: presets must map each preset's name to definition sections, like the defaults "
                "(e.g. {'quick': {'training': {'steps': 200}}})"
            )
        if not isinstance(values, Mapping | ProblemConfig):
            raise ConfigError(
                f"problem {name!r}: the defaults must be a mapping of definition sections or a ProblemConfig, "
                f"got {type(values).__name__} (a decorated function must return them)"
            )
        if name in _REGISTRY and not overwrite:
            raise ConfigError(f"problem {name!r} is already registered; pass overwrite=True to replace it")
        # Deep copies: the caller's dicts changing later must not reach the validated registry entry.
        raw = values.model_dump() if isinstance(values, ProblemConfig) else copy.deepcopy(dict(values))
        raw["problem"] = name
        problem = Problem(name, description, raw, copy.deepcopy({k: dict(v) for k, v in (presets or {}).items()}))
        for preset in (None, *problem.presets):  # fail now, at registration, if the defaults are invalid
            resolve_config(problem, preset=preset)
        _REGISTRY[name] = problem
        return problem

    if defaults is not None:
        return add(defaults)

    def decorator(fn: Callable[[], Mapping[str, Any] | ProblemConfig]) -> Callable[[], Any]:
        # Marked, so that an entry point naming the function is known to have registered it.
        fn.registered_problem = add(fn())  # type: ignore[attr-defined]
        return fn

    return decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    _PLUGIN_FAILURES.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # Every plugin gets its turn: one that fails (to import, in its factory, or with an invalid
        # or clashing problem) is reported by name, and the built-ins and the other plugins stay usable.
        before = set(_REGISTRY)
        try:
            obj = ep.load()
            # A function register_problem decorated registered its problem when its module was
            # imported, which may have been before this loop: it is the problem it registered.
            obj = getattr(obj, "registered_problem", obj)
            if not isinstance(obj, Problem) and callable(obj):
                obj = obj()
            # A module, or a function decorated by register_problem, registers its problems itself
            # (on import, or when called): what it returns then does not matter.
            failure = None if set(_REGISTRY) - before else _add_plugin(obj)
        except Exception as exc:
            failure = str(exc)
        if failure:
            _PLUGIN_FAILURES.append(f"{ep.name!r} ({ep.value}): {failure}")


def _add_plugin(obj: Any) -> str | None:
    """Register the ``Problem`` an entry point gave (it registered nothing itself); the reason it
    cannot be registered, if any."""
    if isinstance(obj, ModuleType):
        return None  # imported before, so its problems were registered then
    if not isinstance(obj, Problem):
        return (
            f"gave a {type(obj).__name__} and registered no problem; point the entry point at a Problem "
            "(register_problem's result) or at a module or function that calls register_problem"
        )
    existing = _REGISTRY.get(obj.name)
    if existing is obj:
        return None  # registered at import by register_problem, which returned it
    if existing is not None:
        return f"problem name {obj.name!r} is already registered; rename the plugin's problem"
    # The checks register_problem makes: a valid name, valid defaults and presets, its own copy.
    register_problem(obj.name, obj.description, obj.defaults, presets=obj.presets)
    return None


def plugin_failure_note() -> str:
    """One line naming the problem plugins that failed to load (empty when none did)."""
    if not _PLUGIN_FAILURES:
        return ""
    return f"problem plugin(s) failed to load: {'; '.join(_PLUGIN_FAILURES)}; fix or uninstall them"


def _ensure_loaded() -> None:
    import jfb_inverse.problems.builtin  # noqa: F401 - registers the built-in problems

    _load_entry_points()


def list_problems() -> dict[str, str]:
    """Registered problem names with their one-line description (plugins that failed to load are
    left out: :func:`plugin_failure_note` names them)."""
    _ensure_loaded()
    return {name: p.description for name, p in sorted(_REGISTRY.items())}


def get_problem(name: str) -> Problem:
    """The registered problem ``name``; an unknown name is a :class:`ConfigError` listing the choices."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        failed = plugin_failure_note()
        raise ConfigError(
            f"unknown problem {name!r}; choose one of {', '.join(sorted(_REGISTRY))} (see `jfb-inverse problems`)"
            + (f"; {failed}" if failed else "")
        ) from None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (sections merge, values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "args":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem of a definition: ``section.field: message (got value)``; an unknown key
    comes with where it belongs or the nearest known one ("did you mean ...")."""
    parts = []
    for err in exc.errors():
        path = [p for p in err["loc"] if not str(p).startswith("function-after")]
        keys, fields = _known_keys(ProblemConfig, path)
        loc = ".".join(str(p) for p in keys)  # without a union's tag: operator.length, not operator.blur.length
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {_short_repr(got)})"
        msg = err["msg"]
        if err["type"] == "value_error":  # our own validators' messages name their fields already
            msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and keys:
            msg += _misplaced_or_misspelt(str(keys[-1]), keys[:-1], fields)
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    if len(parts) > 5:  # every entry of a wrong array would be one
        parts[5:] = [f"and {len(parts) - 5} more"]
    return "; ".join(parts)


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut at ``limit`` characters (an array's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _misplaced_or_misspelt(key: str, section: list[Any], fields: list[str]) -> str:
    """A hint for an unknown ``key``: the nearest field of its own section, and the section (or
    operator kind) where the key itself is a field; "" when there is neither. Both are said where
    both exist: ``patch_size`` in ``[training]`` is near ``batch_size`` there, and belongs in
    ``[data]``."""
    # At the top level of a file every section is "elsewhere" (steps = 3 belongs in [training]).
    elsewhere = _home_of(key, str(section[0]) if section else "") if len(section) <= 1 else ""
    # Beside an exact match elsewhere, only a near-identical spelling (step / steps) is worth saying.
    near = difflib.get_close_matches(key, fields, n=1, cutoff=0.85 if elsewhere else 0.6)
    if near and elsewhere:
        return f"; did you mean {near[0]!r}? ({key!r} itself {elsewhere})"
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; {key!r} {elsewhere}" if elsewhere else ""


def _home_of(key: str, section: str) -> str:
    """Where ``key`` is a field, if not in ``section``: other sections (every one that has it), or
    (in ``operator``) another operator kind; "" when nowhere."""
    homes: list[str] = []
    for name, info in ProblemConfig.model_fields.items():
        members = _models_in(info.annotation)
        for member in members:
            if key in member.model_fields and (name != section or len(members) > 1):
                if name == section:
                    return f"is an option of operator kind {_tag(member)!r}"
                if f"[{name}]" not in homes:
                    homes.append(f"[{name}]")
    return f"belongs in {' or '.join(homes)}" if homes else ""


def _known_keys(model: type[BaseModel], path: list[Any]) -> tuple[list[Any], list[str]]:
    """``path`` without the tags pydantic puts in it for a tagged union's member, and the field
    names of the model its last key belongs to (empty where that cannot be told)."""
    keys: list[Any] = []
    current: Any = model
    for i, part in enumerate(path):
        members = _models_in(current)
        tagged = {_tag(m): m for m in members if _tag(m) is not None}
        if len(members) > 1 and part in tagged:  # the union member pydantic validated against
            current = tagged[part]
            continue
        keys.append(part)
        fields = members[0].model_fields if len(members) == 1 else {}
        if i == len(path) - 1:
            return keys, sorted(fields)
        current = fields[part].annotation if part in fields else None
    return keys, []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (one, the members of a union, or none)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _models_in(args[0])
    return [m for a in args for m in _models_in(a)]


def _tag(model: type[BaseModel]) -> str | None:
    """A tagged union member's ``kind``."""
    field = model.model_fields.get("kind")
    return field.default if field is not None and isinstance(field.default, str) else None


def resolve_config(
    problem: Problem | str,
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> ProblemConfig:
    """Resolve and validate a run's definition: defaults < preset < ``config`` < ``overrides``."""
    prob = get_problem(problem) if isinstance(problem, str) else problem
    values = copy.deepcopy(prob.defaults)
    if preset is not None:
        if preset not in prob.presets:
            choices = ", ".join(sorted(prob.presets)) or "none"
            raise ConfigError(f"problem {prob.name!r} has no preset {preset!r}; presets: {choices}")
        merged = deep_merge(values, prob.presets[preset])
        _refuse_settings_without_effect(prob.presets[preset], values, merged)
        values = merged
    source = _init_from(config, overrides)
    unset = [f for f in NETWORK_FIELDS if not any(f in _section(layer, "model") for layer in (config, overrides))]
    if source is not None and unset:
        # Fine-tuning: the network's shape is the source's where the config and command line leave it
        # open (only the shape: the consistency step and its start belong to this run's operator).
        from jfb_inverse.training.checkpoint import load_checkpoint

        try:
            source_model = load_checkpoint(source)[1].model
            inherited = {f: getattr(source_model, f) for f in unset}
        except UserError as exc:
            if any(f not in LATER_NETWORK_FIELDS for f in unset):
                raise ConfigError(f"training.init_from: {exc}") from None
            # A network given in full by a file from before the later fields existed (a fine-tuned
            # run's problem.toml) needs no source: it trained with those fields' class defaults,
            # whatever this problem's default is now.
            inherited = {f: ModelConfig.model_fields[f].default for f in unset}
        values = deep_merge(values, {"model": inherited})
    for layer in (config or {}, overrides or {}):
        layer = _implied_folder(layer)
        if "problem" in layer and layer["problem"] != prob.name:
            # --operator asks for the problem 'custom' without a --problem: say where it came from.
            why = " (--operator trains problem 'custom')" if prob.name == "custom" else ""
            raise ConfigError(
                f"config is for problem {layer['problem']!r}, but the command asks for {prob.name!r}{why}; "
                "drop one of the two"
            )
        section = layer.get("operator")
        if isinstance(section, Mapping) and "kind" in section:
            if section["kind"] != values["operator"].get("kind"):
                values["operator"] = {}  # a different operator kind replaces the whole section
            elif _another_custom_class(section, values["operator"]):
                # Another class does not take the previous one's constructor arguments; the rest
                # of the section (img_size, say) still applies.
                values["operator"] = {k: v for k, v in values["operator"].items() if k != "args"}
        merged = deep_merge(values, layer)
        _refuse_settings_without_effect(layer, values, merged)
        values = merged
    preset_layer = prob.presets[preset] if preset is not None else None
    budget = _budget_and_steps(prob.defaults, preset_layer, config, overrides)
    if budget and isinstance(values.get("training"), Mapping):  # any other value: validation names it
        values["training"] = {**values["training"], **budget}
    return validate_definition(values)


def _implied_folder(layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` with ``data.source = "folder"`` where it gives a ``data.path`` alone: a folder of
    images says where to train (with the default source 'builtin' it was ignored, and the run
    trained on the bundled images without a word)."""
    layer = dict(layer)
    data = layer.get("data")
    if isinstance(data, Mapping) and data.get("path") is not None and "source" not in data:
        layer["data"] = {**data, "source": "folder"}
    return layer


def _refuse_path_without_folder(layer: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """A ConfigError for a ``data.path`` that ``layer`` gives while the data source in effect once it
    is merged (``after``) is not ``folder``; the value it replaces (``before``) passes."""
    data, source = _section(layer, "data"), _section(after, "data").get("source")
    path = data.get("path")
    if path is not None and source != "folder" and _plain(path) != _plain(_section(before, "data").get("path")):
        raise ConfigError(
            f"data.path = {_short_repr(path)} does nothing with data source {source!r}; set source = 'folder' "
            "to train on it, or drop path"
        )


def _refuse_settings_without_effect(
    layer: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    """A ConfigError for a setting that ``layer`` (a preset, a config, the command line) gives but
    that the kernel or noise kind in effect once it is merged (``after``) does not use: a motion
    ``length`` with the default Gaussian kernel, a photon ``gain`` with Gaussian noise. A value equal
    to the one it replaces (``before``) is no change and passes, so a run's own problem.toml, which
    holds every field, stays a valid --config; and so does a layer whose kernel a later one changes.
    A ``data.path`` is refused the same way unless the data source in effect is ``folder``."""
    _refuse_path_without_folder(layer, before, after)
    for name, model in (("operator", BlurOperator), ("noise", NoiseConfig)):
        section, merged = layer.get(name), after.get(name)
        if not isinstance(section, Mapping) or not isinstance(merged, Mapping):
            continue  # validation names a section of the wrong type
        if name == "operator" and merged.get("kind", "blur") != "blur":
            continue  # only blur kernels carry other variants' fields
        fields = model.model_fields
        full = {key: field.default for key, field in fields.items()} | dict(merged)
        base = before.get(name) if isinstance(before.get(name), Mapping) else {}
        for key in unused_fields(full):
            if key in section and _plain(section[key]) != _plain(base.get(key, fields[key].default)):
                setting = "kernel" if name == "operator" else "kind"
                users = " or ".join(repr(v) for v in variants_using(key, full))
                value = _short_repr(_plain(section[key]))
                raise ConfigError(
                    f"{name}.{key} = {value} does nothing with {name} {setting} {full[setting]!r}; set {setting} = "
                    f"{users} to use it, or drop {key}"
                )


def _budget_and_steps(
    defaults: Mapping[str, Any],
    preset: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``training.minutes`` / ``steps`` corrections from where the budget comes from (``{}``: none).

    The layers are the problem's defaults, the preset, and the user's (the file and the options
    together). The budget is the last layer's that sets ``minutes`` (an explicit ``None`` there
    means no budget). A later layer that sets ``steps`` asks for exactly those steps and lifts the
    budget (``deblur``'s defaults: 4,300 steps, or as many as fit 9 minutes, a guard that
    ``--steps`` lifts). Otherwise ``steps`` set in the budget's own layer are its cap, and without
    them the budget decides the length (:data:`BUDGET_STEP_CAP`): an earlier layer's count would
    cut it short.
    """
    user = {**_section(config, "training"), **_section(overrides, "training")}
    layers = [_section(defaults, "training"), _section(preset, "training"), user]
    source = max((i for i, layer in enumerate(layers) if "minutes" in layer), default=None)
    if source is None or layers[source]["minutes"] is None:
        return {}
    if any("steps" in layer for layer in layers[source + 1 :]):
        return {"minutes": None}  # a guard lifted by asked-for steps
    if "steps" not in layers[source]:
        return {"steps": BUDGET_STEP_CAP}
    return {}


def _plain(value: Any) -> Any:
    """Python's own spellings of a definition's values (tuples, numpy scalars and paths as lists,
    numbers and strings), which strict validation takes; anything else as it is."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        return value.item()
    if hasattr(value, "tolist") and isinstance(getattr(value, "ndim", None), int):  # a numpy array or tensor
        return value.tolist()
    return value


def validate_definition(values: Mapping[str, Any]) -> ProblemConfig:
    """A :class:`ProblemConfig` from plain values (strict: a string is not a number, nor a number a
    bool); a one-line :class:`ConfigError` when invalid."""
    try:
        return ProblemConfig.model_validate(_plain(values))
    except ValidationError as exc:
        raise ConfigError(f"invalid problem definition: {format_validation_error(exc)}") from None


#: The ``model`` fields that decide the shape of the learned weights, which ``init_from`` inherits.
NETWORK_FIELDS = ("arch", "width", "depth", "spectral_norm", "input_injection", "bias")
# Network fields added after fine-tuned runs were already writing problem.toml files: a file that
# leaves only these unset still inherits them from a readable source, and without one takes their
# class defaults (what those runs trained).
LATER_NETWORK_FIELDS = frozenset({"input_injection", "bias"})


def _section(layer: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    section = (layer or {}).get(name)
    return section if isinstance(section, Mapping) else {}


def _init_from(*layers: Mapping[str, Any] | None) -> str | None:
    """``training.init_from`` as the last layer that sets it says (``None``: train from scratch; an
    explicit ``None`` resets an earlier layer's source)."""
    source = None
    for layer in layers:
        training = _section(layer, "training")
        if "init_from" in training:
            value = training["init_from"]
            source = value if isinstance(value, str) else None  # another type: left to the validation
    return source


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict; a missing or malformed file is a :class:`ConfigError`."""
    p = Path(path)
    if p.is_dir():
        hint = " (a run folder's definition is its problem.toml)" if (p / "problem.toml").is_file() else ""
        raise ConfigError(f"config file {str(p)!r} is a folder; pass a .toml or .json file{hint}")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass an existing .toml or .json file")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"config file {str(p)!r} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a table of sections, got {type(data).__name__}")
    return data


#: The file paths a definition holds, as (section, key); a custom operator's ``target`` is a path
#: when its module part names a .py file.
_PATH_FIELDS = (("data", "path"), ("operator", "path"), ("operator", "target"), ("training", "init_from"))


#: The paths every command that reads the file needs: the operator's files (train and simulate).
_NEEDED_PATHS = (("operator", "path"), ("operator", "target"))


def _paths_from_the_file(
    values: dict[str, Any], config_path: Path, overridden: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Relative file paths in a config file, read from the file's own folder where they exist
    there (as a project's files refer to each other), else left as written (the working folder).
    An operator file found in neither folder is an error naming both, unless ``overridden``
    replaces it."""
    base = config_path.parent
    for section, key in _PATH_FIELDS:
        table = values.get(section)
        if not isinstance(table, dict) or not isinstance(table.get(key), str):
            continue
        override = (overridden or {}).get(section) or {}
        # A path the command line replaces (or its whole section, as --operator does) need not exist,
        # but is still read from the file's folder: whether the file's constructor arguments apply
        # depends on --operator naming the same class.
        # A kernel file's numbers embedded beside its path (a run's problem.toml) are the kernel:
        # the file is not needed either, wherever the path points.
        embedded = (section, key) == ("operator", "path") and table.get("values") is not None
        optional = key in override or "kind" in override or embedded
        value = table[key]
        path, sep, rest = value.partition(":") if key == "target" else (value, "", "")
        if key == "target" and not path.endswith(".py"):
            continue  # a module name (package.module:Class), not a file
        if not path or value.startswith("builtin:") or Path(path).expanduser().is_absolute():
            continue
        if (base / path).exists():
            table[key] = str((base / path).resolve()) + sep + rest
        elif (section, key) in _NEEDED_PATHS and not optional and not Path(path).expanduser().exists():
            raise ConfigError(
                f"{section}.{key} {path!r} in {str(config_path)!r} not found: looked in the file's folder "
                f"({str(base.resolve())!r}) and the working folder ({str(Path.cwd())!r}); give an existing path"
            )
    return values


def _another_custom_class(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether custom operator section ``new`` names another class than ``old``."""
    if new["kind"] != "custom" or "target" not in new or not isinstance(old.get("target"), str):
        return False
    from jfb_inverse.problems.custom import absolute_target

    return absolute_target(str(new["target"])) != absolute_target(old["target"])


def config_from_file_or_problem(
    problem: str | None,
    config_path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> ProblemConfig:
    """What ``train`` does: the problem comes from ``problem`` or the config file's ``problem`` key."""
    file_values = (
        _paths_from_the_file(load_config_file(config_path), Path(config_path), overrides) if config_path else {}
    )
    name = problem or file_values.get("problem")
    if not name:
        raise ConfigError('no problem given; pass --problem NAME or set `problem = "NAME"` in the config file')
    _ensure_loaded()
    whole = all(isinstance(file_values.get(section), Mapping) for section in DEFINITION_SECTIONS)
    if problem is None and str(name) not in _REGISTRY and whole:
        # A run's own problem.toml holds its whole definition: it is a valid --config even where its
        # problem (registered from Python, or by a plugin since uninstalled) is not registered.
        warnings.warn(
            f"problem {name!r} is not registered here; {Path(str(config_path)).name} defines it whole, "
            "so it is trained as written",
            UserWarning,
            stacklevel=2,
        )
        # The file is the problem's defaults here, which no layer check sees: its data.path is checked as a layer's.
        file_values = _implied_folder(file_values)
        _refuse_path_without_folder(file_values, {}, file_values)
        return resolve_config(Problem(str(name), "a whole definition file", file_values), None, overrides, preset)
    return resolve_config(str(name), file_values, overrides, preset)
