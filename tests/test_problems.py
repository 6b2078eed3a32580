"""Typed problem definitions: validation, registry, entry points, config files."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from jfb_inverse.errors import ConfigError
from jfb_inverse.problems import (
    ProblemConfig,
    config_from_file_or_problem,
    get_problem,
    list_problems,
    load_config_file,
    register_problem,
    resolve_config,
)
from jfb_inverse.problems import registry as registry_module
from jfb_inverse.training.checkpoint import load_checkpoint


def test_deblur_reference_defaults():
    cfg = resolve_config("deblur")
    assert cfg.operator.kind == "blur" and cfg.operator.kernel == "gaussian" and cfg.operator.sigma == 2.0
    assert cfg.noise.kind == "gaussian" and cfg.noise.sigma == 0.01 and not cfg.noise.relative
    assert cfg.data.channels == 1
    assert "deblur" in list_problems()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training": {"stepz": 10}}, "training.stepz: Extra inputs are not permitted"),
        ({"training": {"steps": -5}}, "training.steps: Input should be greater than 0"),
        ({"noise": {"sigma": -0.1}}, "noise.sigma: Input should be greater than or equal to 0"),
        ({"operator": {"sigma": "wide"}}, "operator.sigma: Input should be a valid number"),
        # A misspelt key: the nearest known one of its section (of the operator's kind) is offered.
        ({"training": {"step": 10}}, "training.step: Extra inputs are not permitted; did you mean 'steps'?"),
        ({"operator": {"lenght": 9}}, "operator.lenght: Extra inputs are not permitted; did you mean 'length'?"),
        ({"operator": {"kind": "ct", "angels": 9}}, "did you mean 'angles'?"),
        ({"trainng": {}}, "trainng: Extra inputs are not permitted; did you mean 'training'?"),
        # A key in the wrong section or of another operator kind: said where it belongs.
        ({"training": {"max_iter": 9}}, "max_iter: Extra inputs are not permitted; 'max_iter' belongs in [solver]"),
        ({"training": {"patch_size": 9}}, "did you mean 'batch_size'? ('patch_size' itself belongs in [data])"),
        ({"operator": {"angles": 9}}, "did you mean 'angle'? ('angles' itself is an option of operator kind 'ct')"),
        (
            {"operator": {"kernel": "file"}},
            "kernel 'file' needs operator.path (a .npy or .png kernel) or operator.values",
        ),
        (
            {"operator": {"kernel": "box", "values": [[1.0]]}},
            # Said before validation would say "operator.values is a 'file' kernel's numbers".
            "operator.values = [[1.0]] does nothing with operator kernel 'box'; set kernel = 'file' to use it",
        ),
        ({"operator": {"kernel": "file", "values": [[1.0, 2.0], [1.0]]}}, "rows of equal, non-zero length"),
        ({"operator": {"kernel": "file", "values": [[1.0, -1.0]]}}, "finite numbers with a positive sum"),
        ({"data": {"source": "folder"}}, "needs data.path"),
        ({"solver": {"name": "newton"}}, "solver.name"),
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        # Seeds that torch or the derived phantom seeds (seed * 1,000,003) cannot take.
        ({"training": {"seed": 2**64}}, "training.seed: Input should be less than or equal to 4294967295"),
        ({"training": {"seed": -1}}, "training.seed: Input should be greater than or equal to 0"),
        ({"training": {"lr": 1e300}}, "training.lr: Input should be less than or equal to 10"),
        (
            {"data": {"dead_leaves": 0.1}, "training": {"batch_size": 4}},
            "data.dead_leaves 0.1 of a batch of 4 rounds to no synthetic patch",
        ),
        ({"data": {"dead_leaves": 0.9}, "training": {"batch_size": 2}}, "rounds to 2 synthetic patches, no real image"),
        (
            {"operator": {"kind": "custom", "target": "ops.py:Scale", "args": {"offset": None}}},
            "operator.args.offset is null, which problem.toml cannot store",
        ),
    ],
)
def test_invalid_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config("deblur", overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_problem_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown problem 'deblurr'.*deblur"):
        get_problem("deblurr")


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('problem = "deblur"\n[training]\nsteps = 7\nlr = 0.01\n[noise]\nsigma = 0.03\n')
    cfg = config_from_file_or_problem(None, path, overrides={"training": {"steps": 3}}, preset="full")
    assert cfg.training.steps == 3  # command line beats file beats preset
    assert cfg.training.lr == 0.01  # file beats defaults
    assert cfg.training.lipschitz_every == 500  # preset beats defaults
    assert cfg.noise.sigma == 0.03


def test_operator_kind_change_replaces_the_section():
    cfg = resolve_config("deblur", overrides={"operator": {"kind": "blur", "kernel": "box", "size": 3}})
    assert cfg.operator.kernel == "box"
    cfg = resolve_config("deblur", overrides={"operator": {"kind": "inpainting", "missing": 0.3}})
    assert cfg.operator.kind == "inpainting" and cfg.operator.missing == 0.3


@pytest.mark.parametrize(
    ("section", "message"),
    [
        # The kernel stayed Gaussian and the length went unused, silently.
        ({"operator": {"kernel": "gaussian", "length": 11}}, "operator.length = 11 does nothing with operator kernel "
         "'gaussian'; set kernel = 'motion' to use it, or drop length"),
        ({"operator": {"length": 11, "angle": 30.0}}, "operator.length = 11 does nothing"),
        ({"operator": {"kind": "blur", "kernel": "box", "sigma": 3.0}}, "set kernel = 'gaussian' to use it"),
        ({"noise": {"gain": 50.0}}, "noise.gain = 50.0 does nothing with noise kind 'gaussian'; set kind = 'poisson'"),
        # From Python, an array: compared as a list (an array's == is no yes or no).
        ({"operator": {"kernel": "box", "values": np.ones((2, 2))}}, "operator.values = [[1.0, 1.0], [1.0, 1.0]] does"),
        ({"data": {"source": "builtin", "path": "photos"}}, "data.path = 'photos' does nothing with data source "
         "'builtin'; set source = 'folder' to train on it, or drop path"),
        ({"data": {"source": "mixed", "path": "photos"}}, "data.path = 'photos' does nothing with data source 'mixed'"),
    ],
)  # fmt: skip
def test_a_setting_that_the_chosen_kernel_or_noise_does_not_use_is_an_error(section, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config("deblur", config=section)


def test_a_data_path_given_alone_means_a_folder_of_images():
    # It was ignored: the run trained on the bundled images (source 'builtin', the default) without a word.
    cfg = resolve_config("deblur", config={"data": {"path": "photos"}})
    assert cfg.data.source == "folder" and cfg.data.path == "photos"
    assert resolve_config("deblur", overrides={"data": {"path": "photos"}}).data.source == "folder"
    assert resolve_config("deblur", config=cfg.model_dump()) == cfg  # its problem.toml comes back the same


def test_a_runs_own_problem_toml_with_every_field_is_still_a_valid_config(tmp_path):
    # problem.toml holds the fields of every kernel: the unused ones at the values the problem had.
    motion = resolve_config("deblur", config={"operator": {"kernel": "motion", "length": 11, "angle": 30.0}})
    assert motion.operator.sigma == 2.0 and motion.operator.size == 5  # unused, and kept
    path = tmp_path / "problem.toml"
    path.write_text(tomli_w.dumps(motion.model_dump(mode="json", exclude_none=True)))
    assert config_from_file_or_problem(None, path, {}, None) == motion
    poisson = resolve_config("deblur", config={"noise": {"kind": "poisson", "gain": 50.0}})
    assert resolve_config("deblur", config={"noise": poisson.noise.model_dump()}).noise.gain == 50.0
    # Back to Gaussian noise from a Poisson problem.toml is a change of kind: its gain then does nothing.
    with pytest.raises(ConfigError, match=re.escape("noise.gain = 50.0 does nothing")):
        resolve_config("deblur", config={"noise": {**poisson.noise.model_dump(), "kind": "gaussian"}})
    # A layer whose kernel a later one changes: the file's motion length was used where it was written.
    gaussian = resolve_config("deblur", config=motion.model_dump(), overrides={"operator": {"kernel": "gaussian"}})
    assert gaussian.operator.kernel == "gaussian"


def test_a_whole_problem_toml_trains_again_where_its_problem_is_not_registered(tmp_path, monkeypatch):
    # A problem registered from Python (or by a plugin since uninstalled) is unknown to a new process:
    # its run's problem.toml, which the README says can be passed back with --config, was refused.
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    register_problem("myblur", "box blur", {"operator": {"kind": "blur", "kernel": "box", "size": 7}})
    run = resolve_config("myblur", overrides={"training": {"steps": 5}})
    path = tmp_path / "problem.toml"
    path.write_text(tomli_w.dumps(run.model_dump(mode="json", exclude_none=True)))
    del registry_module._REGISTRY["myblur"]
    with pytest.warns(UserWarning, match="problem 'myblur' is not registered here; problem.toml defines it whole"):
        again = config_from_file_or_problem(None, path, {"training": {"steps": 9}})
    assert again == run.model_copy(update={"training": run.training.model_copy(update={"steps": 9})})
    # Its data.path alone means a folder, as in a registered problem's config (it trained on the bundled images).
    values = again.model_dump(mode="json", exclude_none=True)
    values["data"] = {k: v for k, v in values["data"].items() if k != "source"} | {"path": "photos"}
    path.write_text(tomli_w.dumps(values))
    with pytest.warns(UserWarning, match="not registered here"):
        assert config_from_file_or_problem(None, path).data.source == "folder"
    path.write_text(tomli_w.dumps(values | {"data": values["data"] | {"source": "builtin"}}))
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match=r"data\.path = 'photos' does nothing with data"):
        config_from_file_or_problem(None, path)
    # A partial file still needs its problem.
    (tmp_path / "part.toml").write_text('problem = "myblur"\n[training]\nsteps = 3\n')
    with pytest.raises(ConfigError, match="unknown problem 'myblur'"):
        config_from_file_or_problem(None, tmp_path / "part.toml")


def test_the_problem_toml_of_a_run_that_changed_its_problems_noise_kind_is_a_valid_config(monkeypatch):
    # The problem's Poisson gain stays in a Gaussian run's definition (the noise section is merged,
    # not replaced): it was refused when that run's problem.toml came back as a --config.
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    noise = {"kind": "poisson", "gain": 50.0, "sigma": 0.0}
    register_problem("poisson-blur", "d", {"operator": {"kind": "blur"}, "noise": noise})
    run = resolve_config("poisson-blur", config={"noise": {"kind": "gaussian", "sigma": 0.01}})
    assert run.noise.gain == 50.0
    assert resolve_config("poisson-blur", config=run.model_dump()) == run
    # A preset is checked like a config, at registration.
    with pytest.raises(ConfigError, match=re.escape("operator.length = 15 does nothing with operator kernel")):
        register_problem("bad-preset", "d", {"operator": {"kind": "blur"}}, presets={"p": {"operator": {"length": 15}}})


@pytest.mark.parametrize(
    ("text", "message"),
    [("[training\nsteps=1", "not valid TOML"), ("[training]\nsteps = 'many'", "training.steps")],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config_from_file_or_problem("deblur", path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "nope.toml")


def test_register_problem_decorator_and_validation():
    @register_problem("test-box", "Box blur 3x3", overwrite=True)
    def _defaults():
        return {"operator": {"kind": "blur", "kernel": "box", "size": 3}}

    assert list_problems()["test-box"] == "Box blur 3x3"
    assert resolve_config("test-box").operator.size == 3
    with pytest.raises(ConfigError, match="already registered"):
        register_problem("test-box", "again", {"operator": {"kind": "blur"}})
    with pytest.raises(ConfigError, match="operator"):
        register_problem("test-bad", "bad", {"operator": {"kind": "blur", "sigma": -1}})


def test_entry_point_plugins_are_loaded(monkeypatch):
    plugin = registry_module.Problem(
        "plugin-blur",
        "from a plugin",
        {"problem": "plugin-blur", "operator": {"kind": "blur", "kernel": "box", "size": 5}},
    )
    monkeypatch.setattr("tests.plugin_problem.PROBLEM", plugin, raising=False)
    ep = EntryPoint(name="plugin-blur", value="tests.plugin_problem:PROBLEM", group=registry_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    assert "plugin-blur" in list_problems()
    assert resolve_config("plugin-blur").operator.size == 5


def test_resolved_definition_round_trips_through_json():
    cfg = resolve_config("deblur", preset="full")
    assert ProblemConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_motion_example_fine_tunes_from_the_shipped_model(tmp_path):
    # examples/motion.toml is the README's fine-tuning example: it must load and start from the
    # shipped deblur model's weights (lr ~0: one step leaves them in place).
    from jfb_inverse.training.loop import train

    path = Path(__file__).resolve().parents[1] / "examples" / "motion.toml"
    small = {"data": {"patch_size": 32, "eval_size": 32}, "training": {"steps": 1, "batch_size": 2, "lr": 1e-12}}
    small["training"]["init_from"] = "builtin:deblur"
    cfg = config_from_file_or_problem(None, path, overrides=small)
    assert (cfg.operator.kernel, cfg.operator.length, cfg.operator.angle) == ("motion", 11, 30.0)
    train(cfg, tmp_path)
    source = load_checkpoint("builtin:deblur")[0]["state_dict"]
    tuned = load_checkpoint(tmp_path / "model.pt")[0]["state_dict"]
    assert max(float((tuned[k] - v).abs().max()) for k, v in source.items()) < 1e-6


def test_a_plugin_that_fails_is_named_and_the_others_still_load(monkeypatch):
    good = registry_module.Problem(
        "plugin-good", "from a plugin", {"problem": "plugin-good", "operator": {"kind": "blur", "kernel": "box"}}
    )

    def broken_factory():
        raise RuntimeError("factory bug")

    monkeypatch.setattr("tests.plugin_problem.GOOD", good, raising=False)
    monkeypatch.setattr("tests.plugin_problem.BROKEN", broken_factory, raising=False)
    group = registry_module.ENTRY_POINT_GROUP
    eps = [
        EntryPoint(name="plugin-broken", value="tests.plugin_problem:BROKEN", group=group),
        EntryPoint(name="plugin-good", value="tests.plugin_problem:GOOD", group=group),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    # The broken plugin is named where it is looked for; the built-ins and the other plugin stay usable.
    assert {"plugin-good", "deblur"} <= set(list_problems()) and "plugin-broken" not in list_problems()
    assert resolve_config("deblur").problem == "deblur"
    with pytest.raises(ConfigError, match=r"'plugin-broken' \(tests.plugin_problem:BROKEN\): factory bug"):
        resolve_config("plugin-broken")
    monkeypatch.delitem(registry_module._REGISTRY, "plugin-good")


def test_plugins_that_give_no_problem_or_clash_with_a_name_are_reported(monkeypatch):
    group = registry_module.ENTRY_POINT_GROUP
    clash = registry_module.Problem("deblur", "a second deblur", {"problem": "deblur", "operator": {"kind": "blur"}})
    invalid = registry_module.Problem(
        "plugin-invalid", "bad", {"problem": "plugin-invalid", "operator": {"kind": "blur", "sigma": -1}}
    )
    monkeypatch.setattr("tests.plugin_problem.AS_DICT", lambda: {"operator": {"kind": "blur"}}, raising=False)
    monkeypatch.setattr("tests.plugin_problem.CLASH", clash, raising=False)
    monkeypatch.setattr("tests.plugin_problem.INVALID", invalid, raising=False)
    names = {"plugin-dict": "AS_DICT", "plugin-clash": "CLASH", "plugin-invalid": "INVALID"}
    eps = [EntryPoint(name=n, value=f"tests.plugin_problem:{v}", group=group) for n, v in names.items()]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    listed = list_problems()  # these used to be dropped without a word (the clash replaced nothing)
    assert "plugin-invalid" not in listed and listed["deblur"] != "a second deblur"
    note = registry_module.plugin_failure_note()
    assert "'plugin-dict' (tests.plugin_problem:AS_DICT): gave a dict and registered no problem" in note
    assert "'plugin-clash' (tests.plugin_problem:CLASH): problem name 'deblur' is already registered" in note
    assert "'plugin-invalid' (tests.plugin_problem:INVALID): " in note and "sigma" in note
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [])
    list_problems()
    assert registry_module.plugin_failure_note() == ""


def test_a_decorated_function_imported_before_the_plugins_load_is_its_problem(monkeypatch):
    try:

        @register_problem("plugin-early", "registered at import, before the entry points load")
        def early():
            return {"operator": {"kind": "blur"}}

        monkeypatch.setattr("tests.plugin_problem.EARLY", early, raising=False)
        group = registry_module.ENTRY_POINT_GROUP
        ep = EntryPoint(name="plugin-early", value="tests.plugin_problem:EARLY", group=group)
        monkeypatch.setattr(registry_module, "entry_points", lambda group: [ep])
        monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
        assert "plugin-early" in list_problems()
        assert registry_module.plugin_failure_note() == ""  # it used to read "gave a dict, registered nothing"
    finally:
        registry_module._REGISTRY.pop("plugin-early", None)


def test_plugins_that_register_their_own_problems_are_not_reported(monkeypatch):
    # A function decorated by register_problem returns its defaults when called again, and a module
    # returns itself: neither is a Problem, and both registered theirs, so neither is a failure.
    def decorated():
        register_problem("plugin-decorated", "decorated", {"operator": {"kind": "blur"}})
        return {"operator": {"kind": "blur"}}

    def module_like():
        import types

        register_problem("plugin-module", "module", {"operator": {"kind": "blur"}})
        return types.ModuleType("plugin_module")

    monkeypatch.setattr("tests.plugin_problem.DECORATED", decorated, raising=False)
    monkeypatch.setattr("tests.plugin_problem.MODULE", module_like, raising=False)
    group = registry_module.ENTRY_POINT_GROUP
    eps = [EntryPoint(name=n, value=f"tests.plugin_problem:{n.upper()}", group=group) for n in ("decorated", "module")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    monkeypatch.setattr(registry_module, "_entry_points_loaded", False)
    try:
        assert {"plugin-decorated", "plugin-module"} <= set(list_problems())
        assert registry_module.plugin_failure_note() == ""
    finally:
        for name in ("plugin-decorated", "plugin-module"):
            registry_module._REGISTRY.pop(name, None)


def test_registration_keeps_its_own_copy_and_checks_names_values_and_presets():
    defaults = {"operator": {"kind": "blur", "sigma": 1.0}}
    try:
        register_problem("test-copy", "copied", defaults, presets={"wide": {"operator": {"sigma": 3.0}}})
        defaults["operator"]["sigma"] = 99.0  # used to reach the registry, past its validation
        assert resolve_config("test-copy").operator.sigma == 1.0
    finally:
        registry_module._REGISTRY.pop("test-copy", None)
    for name in ("", "with space", "a:b"):
        with pytest.raises(ConfigError, match="use letters, digits"):
            register_problem(name, "bad name", {"operator": {"kind": "blur"}})
    with pytest.raises(ConfigError, match="a decorated function must return them"):

        @register_problem("test-none", "returns nothing")
        def nothing():
            return None

    with pytest.raises(ConfigError, match="sigma"):
        register_problem(
            "test-badpreset", "x", {"operator": {"kind": "blur"}}, presets={"p": {"operator": {"sigma": -1}}}
        )
    assert "test-none" not in list_problems() and "test-badpreset" not in list_problems()


def test_the_problems_command_prints_descriptions_as_written_and_names_broken_plugins(monkeypatch):
    from jfb_inverse.cli.app import app
    from jfb_inverse.cli.common import console
    from typer.testing import CliRunner

    try:
        register_problem(
            "test-markup", "Box blur [size 7] of a [bold]plugin[/] ends [/] early", {"operator": {"kind": "blur"}}
        )
        monkeypatch.setattr(registry_module, "_PLUGIN_FAILURES", ["'x' (pkg:X): boom"])
        monkeypatch.setattr(registry_module, "_entry_points_loaded", True)
        monkeypatch.setattr(console, "width", 200)  # rich's console took its width when created
        result = CliRunner().invoke(app, ["problems"])
    finally:
        registry_module._REGISTRY.pop("test-markup", None)
    assert result.exit_code == 0, result.output
    assert "Box blur [size 7] of a [bold]plugin[/] ends [/] early" in result.output  # was a MarkupError traceback
    assert "problem plugin(s) failed to load: 'x' (pkg:X): boom" in result.output


def test_overwriting_a_builtin_name_before_the_builtins_load_keeps_the_registry_usable():
    # In a fresh interpreter: the built-ins registered after the user's overwrite used to collide.
    import subprocess
    import sys

    code = (
        "from jfb_inverse.problems import list_problems, register_problem, resolve_config\n"
        "register_problem('mri', 'my MRI', {'operator': {'kind': 'blur', 'kernel': 'box'}}, overwrite=True)\n"
        "assert list_problems()['mri'] == 'my MRI'\n"
        "assert resolve_config('deblur').operator.kind == 'blur'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_relative_paths_in_a_config_file_are_read_from_its_folder(tmp_path, monkeypatch):
    import numpy as np

    from jfb_inverse.problems import config_from_file_or_problem

    project = tmp_path / "project"
    (project / "imgs").mkdir(parents=True)
    np.save(project / "k.npy", np.ones((3, 3), dtype=np.float32) / 9)
    config = project / "run.toml"
    config.write_text(
        'problem = "deblur"\n[data]\nsource = "folder"\npath = "imgs"\n'
        '[operator]\nkernel = "file"\npath = "k.npy"\n[training]\ninit_from = "builtin:deblur"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config_from_file_or_problem(None, config)
    assert cfg.data.path == str((project / "imgs").resolve())
    assert cfg.operator.path == str((project / "k.npy").resolve())
    assert cfg.training.init_from == "builtin:deblur"
    # A path that is not there but in the working folder keeps meaning what it meant before.
    (elsewhere / "other").mkdir()
    config.write_text('problem = "deblur"\n[data]\nsource = "folder"\npath = "other"\n')
    assert config_from_file_or_problem(None, config).data.path == "other"


def test_an_operator_file_missing_from_both_folders_names_them(tmp_path, monkeypatch):
    from jfb_inverse.problems import config_from_file_or_problem

    project = tmp_path / "project"
    project.mkdir()
    config = project / "run.toml"
    config.write_text('problem = "deblur"\n[operator]\nkernel = "file"\npath = "k.npy"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        config_from_file_or_problem(None, config)
    message = str(info.value)
    assert "operator.path 'k.npy'" in message and str(project.resolve()) in message and str(tmp_path) in message
    # An operator the command line replaces (--operator: another kind) needs no file of the config.
    custom = {"operator": {"kind": "custom", "target": "pkg.ops:Op"}}
    assert config_from_file_or_problem(None, config, custom).operator.kind == "custom"


def test_another_custom_operator_on_the_command_line_drops_the_files_arguments():
    downsample = {"kind": "custom", "target": "pkg.ops:Downsample", "args": {"factor": 2}, "img_size": [1, 8, 8]}
    config = {"operator": downsample}
    other = resolve_config("custom", config, {"operator": {"kind": "custom", "target": "pkg.ops:Mask"}})
    assert other.operator.target == "pkg.ops:Mask" and other.operator.args == {}
    assert list(other.operator.img_size) == [1, 8, 8]  # the rest of the section still applies
    same = resolve_config("custom", config, {"operator": {"kind": "custom", "target": "pkg.ops:Downsample"}})
    assert same.operator.args == {"factor": 2}  # naming the same class again keeps them


def test_the_same_operator_file_on_the_command_line_keeps_the_files_arguments_from_any_folder(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "ops.py").write_text("class Sensor:\n    pass\n")
    (project / "c.toml").write_text(
        'problem = "custom"\n[operator]\nkind = "custom"\ntarget = "ops.py:Sensor"\n[operator.args]\nstride = 4\n'
    )
    for cwd, file, target in [(tmp_path, "proj/c.toml", "proj/ops.py:Sensor"), (project, "c.toml", "ops.py:Sensor")]:
        monkeypatch.chdir(cwd)
        overrides = {"operator": {"kind": "custom", "target": target}}
        cfg = config_from_file_or_problem(None, file, overrides)
        # From the project's parent the file's relative target used to read as another class.
        assert cfg.operator.args == {"stride": 4}, cwd


def test_a_measurement_of_another_custom_operator_asks_for_a_checkpoint_of_that_operator(tmp_path):
    import json

    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import check_provenance, provenance, provenance_path

    made = resolve_config("custom", {"operator": {"kind": "custom", "target": "pkg.ops:Downsample"}})
    have = resolve_config("custom", {"operator": {"kind": "custom", "target": "pkg.ops:Mask"}})
    provenance_path(tmp_path / "y.npy").write_text(json.dumps(provenance(made, (1, 32, 32), 0)))
    with pytest.raises(UserError, match=r"'pkg\.ops:Downsample' operator .* use a checkpoint trained on that operator"):
        check_provenance(tmp_path / "y.npy", have, "run")


def test_a_top_level_key_says_its_section_and_a_folder_is_not_a_config_file(tmp_path):
    (tmp_path / "top.toml").write_text('problem = "deblur"\nsteps = 3\n')
    with pytest.raises(ConfigError, match=r"steps: Extra inputs are not permitted; 'steps' belongs in \[training\]"):
        config_from_file_or_problem(None, tmp_path / "top.toml")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "problem.toml").write_text('problem = "deblur"\n')
    with pytest.raises(ConfigError, match=r"is a folder; pass a .toml or .json file \(a run folder's definition is"):
        config_from_file_or_problem(None, tmp_path / "run")


def test_definitions_are_strict_about_types_but_take_pythons_own_spellings():
    import numpy as np

    for overrides, message in [
        ({"training": {"steps": True}}, r"training.steps: Input should be a valid integer \(got True\)"),
        ({"training": {"lr": "0.01"}}, r"training.lr: Input should be a valid number"),
        ({"model": {"spectral_norm": "off"}}, r"model.spectral_norm: Input should be a valid boolean"),
        ({"training": {"batch_size": "4"}}, r"training.batch_size: Input should be a valid integer"),
    ]:  # all four used to be converted (True -> 1 step, "off" -> False)
        with pytest.raises(ConfigError, match=message):
            resolve_config("deblur", overrides=overrides)
    cfg = resolve_config(
        "deblur",
        overrides={"data": {"scales": (1.0, 0.5), "path": Path("imgs")}, "training": {"steps": np.int64(3), "lr": 1}},
    )
    assert (cfg.data.scales, cfg.data.path, cfg.training.steps, cfg.training.lr) == ([1.0, 0.5], "imgs", 3, 1.0)


def test_listing_and_validating_problems_imports_neither_torch_nor_deepinv():
    # `jfb-inverse problems` and a config error used to wait 3-4 s for deepinv and torch to import.
    code = (
        "import sys; from jfb_inverse.problems import list_problems, resolve_config; list_problems(); "
        "resolve_config('deblur', overrides={'noise': {'sigma': 0.02}}); "
        "print(sorted(m for m in ('torch', 'deepinv') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"presets": {"fast": 3}}, "presets must map each preset's name to definition sections"),  # was a TypeError
        ({"presets": ["fast"]}, "presets must map each preset's name to definition sections"),
        ({"presets": {1: {"training": {"steps": 5}}}}, "presets must map each preset's name to definition sections"),
        ({"description": 123}, "the description must be a string, got int"),  # was stored as an int
        (
            {"defaults": {"operator": {"kind": "blur", "kernel": "file", "values": np.ones((3, 3, 3))}}},
            r"operator.values.0.0: Input should be a valid number \(got \[1.0, 1.0, 1.0\]\);.*; and 4 more$",
        ),
    ],
)
def test_register_problem_refuses_bad_arguments_in_one_line(kwargs, message):
    arguments = {"description": "a test", "defaults": {"operator": {"kind": "blur"}}, **kwargs}
    with pytest.raises(ConfigError, match=message) as caught:
        register_problem("bad-arguments", overwrite=True, **arguments)
    assert "\n" not in str(caught.value)
    assert "bad-arguments" not in list_problems()


@pytest.mark.parametrize("array", [np.full((3, 3), 1 / 9), torch.full((3, 3), 1 / 9)], ids=["numpy", "torch"])
def test_register_problem_takes_a_kernel_as_an_array(array, monkeypatch):
    # An array was refused, with its multi-line repr inside the "one-line" error.
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))  # it goes with the test
    defaults = {"operator": {"kind": "blur", "kernel": "file", "values": array}}
    register_problem("array-kernel", "d", defaults, overwrite=True)
    np.testing.assert_allclose(resolve_config("array-kernel").operator.values, np.full((3, 3), 1 / 9), rtol=1e-6)
