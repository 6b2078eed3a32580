"""A ``file`` blur kernel travels with its run: training embeds its numbers (``operator.values``),
so a checkpoint reconstructs the same after the file is gone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jfb_inverse.cli.app import app
from typer.testing import CliRunner

from jfb_inverse.problems import resolve_config
from jfb_inverse.problems.operators import blur_kernel, load_kernel
from jfb_inverse.training.checkpoint import load_checkpoint, load_model
from jfb_inverse.training.loop import train

TINY = {
    "data": {"patch_size": 32},
    "model": {"width": 8, "depth": 3},
    "training": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 2, "precision": "fp32"},
}


def _kernel_file(folder) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(3)
    kernel = rng.random((5, 7))  # not symmetric, not normalised: the file is normalised on reading
    path = folder / "k.npy"
    np.save(path, kernel)
    return str(path), kernel


def test_values_in_a_definition_are_the_kernel_normalised(tmp_path) -> None:
    path, kernel = _kernel_file(tmp_path)
    from_file = blur_kernel(resolve_config("deblur", overrides={"operator": {"kernel": "file", "path": path}}).operator)
    inline = resolve_config("deblur", overrides={"operator": {"kernel": "file", "values": kernel.tolist()}})
    assert torch.allclose(blur_kernel(inline.operator), from_file, atol=1e-7)
    assert from_file.shape == (1, 1, 5, 7) and abs(float(from_file.sum()) - 1) < 1e-6


def test_a_trained_run_reconstructs_without_its_kernel_file(tmp_path) -> None:
    path, _ = _kernel_file(tmp_path)
    cfg = resolve_config("deblur", overrides={**TINY, "operator": {"kernel": "file", "path": path}})
    train(cfg, tmp_path / "run")
    _, stored = load_checkpoint(tmp_path / "run" / "model.pt")
    assert stored.operator.path == path and stored.operator.values is not None
    assert torch.equal(blur_kernel(stored.operator), load_kernel(path))  # the file's kernel, bitwise
    assert "values = [" in (tmp_path / "run" / "problem.toml").read_text()
    x = torch.rand(1, 1, 40, 36, generator=torch.Generator().manual_seed(0))
    model, _, physics = load_model(str(tmp_path / "run" / "model.pt"), "cpu")
    y = physics.for_image((1, 40, 36)).A(x)
    before = model(y).detach()
    (tmp_path / "k.npy").unlink()
    model, _, _ = load_model(str(tmp_path / "run" / "model.pt"), "cpu")
    assert torch.equal(model(y).detach(), before)
    # The CLI too: simulate and reconstruct with the checkpoint, the file gone.
    np.save(tmp_path / "clean.npy", x[0].numpy())
    runner = CliRunner()
    ckpt = str(tmp_path / "run" / "model.pt")
    for args in (
        ["simulate", "--checkpoint", ckpt, "--input", str(tmp_path / "clean.npy"), "--output", str(tmp_path / "y.npy")],
        ["reconstruct", "--checkpoint", ckpt, "--input", str(tmp_path / "y.npy"), "--output", str(tmp_path / "x.npy")],
    ):
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape[-2:] == (40, 36)


def test_measurement_sidecars_compare_kernels_briefly(tmp_path) -> None:
    import json

    from jfb_inverse.measurements import check_provenance, provenance, provenance_path

    path, kernel = _kernel_file(tmp_path)

    def definition(**operator: object):
        return resolve_config("deblur", overrides={"operator": {"kernel": "file", **operator}})

    def sidecar(cfg) -> str:
        y = tmp_path / "y.npy"
        provenance_path(y).write_text(json.dumps(provenance(cfg, (1, 32, 32), seed=0)))
        return str(y)

    ckpt = definition(path=path, values=kernel.tolist())
    # Simulated from the file itself, before kernels were embedded: the same path, no values.
    assert check_provenance(sidecar(definition(path=path)), ckpt, "ckpt") is None
    other = definition(path=path, values=np.ones((3, 3)).tolist())
    message = check_provenance(sidecar(other), ckpt, "ckpt")
    assert message is not None and "values <3x3 kernel> vs <5x7 kernel>" in message and len(message) < 200
    # The same kernel written unnormalised is the same operator, and so is one with an unused sigma.
    assert check_provenance(sidecar(definition(values=(kernel * 11.5).tolist())), ckpt, "ckpt") is None
    motion = resolve_config("deblur", overrides={"operator": {"kernel": "motion", "length": 7}})
    # A definition can no longer set it (it does nothing), but a record from before could hold one.
    unused_sigma = motion.model_copy(update={"operator": motion.operator.model_copy(update={"sigma": 1.0})})
    assert check_provenance(sidecar(unused_sigma), motion, "ckpt") is None  # both used to warn
    assert "length 9 vs 7" in check_provenance(sidecar(definition(kernel="motion")), motion, "ckpt")


def test_kernels_with_negative_entries_or_an_alpha_channel(tmp_path) -> None:
    import skimage.io

    from jfb_inverse.errors import UserError

    np.save(tmp_path / "neg.npy", np.array([[1.0, -0.999]]))  # normalised to entries of about +-1000
    with pytest.raises(UserError, match=r"negative entries \(down to -0.999\); a blur kernel is non-negative"):
        load_kernel(tmp_path / "neg.npy")
    with pytest.raises(UserError, match=r"operator\.values has negative entries"):
        resolve_config("deblur", overrides={"operator": {"kernel": "file", "values": [[2.0, -1.0]]}})
    grey = np.zeros((5, 5), np.uint8)
    grey[2, 1:4] = 255
    skimage.io.imsave(tmp_path / "la.png", np.stack([grey, np.full_like(grey, 255)], -1), check_contrast=False)
    # An opaque alpha channel used to be averaged into every entry (0.019 instead of 0 off the line).
    assert torch.equal(load_kernel(tmp_path / "la.png")[0, 0], torch.from_numpy(grey / grey.sum()).float())


def test_simulate_records_the_kernel_so_reconstruct_compares_kernels_not_file_names(tmp_path, monkeypatch) -> None:
    import json

    path, kernel = _kernel_file(tmp_path)
    cfg = resolve_config("deblur", overrides={**TINY, "operator": {"kernel": "file", "path": path}})
    train(cfg, tmp_path / "run")
    ckpt = str(tmp_path / "run" / "model.pt")
    np.save(tmp_path / "clean.npy", np.random.default_rng(0).random((1, 32, 32)).astype(np.float32))
    runner = CliRunner()

    def simulate_with(kernel_path: str, folder: str) -> str:
        """simulate with a --config (in its own folder) naming the kernel file relative to the working folder."""
        work = tmp_path / folder
        (work / "cfg").mkdir(parents=True)
        config = work / "cfg" / "run.toml"
        config.write_text(f'problem = "deblur"\n[operator]\nkernel = "file"\npath = "{kernel_path}"\n')
        monkeypatch.chdir(work)
        args = ["simulate", "--config", str(config), "--input", str(tmp_path / "clean.npy"), "--output", "y.npy"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return str(work / "y.npy")

    def reconstruct_output(y: str) -> str:
        args = ["reconstruct", "--checkpoint", ckpt, "--input", y, "--output", str(tmp_path / "x.npy")]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    # The same numbers under another (relative) name: the same kernel, no warning.
    np.save(tmp_path / "copy.npy", kernel)
    same = simulate_with("../copy.npy", "a")
    operator = json.loads((tmp_path / "a" / "y.npy.json").read_text())["operator"]
    assert operator["path"] == str(tmp_path / "copy.npy") and np.allclose(operator["values"], kernel / kernel.sum())
    assert "other operator parameters" not in reconstruct_output(same)
    # Other numbers under the checkpoint's own file name: another kernel, said.
    np.save(path, np.ones((3, 3)))
    other = simulate_with(path, "b")
    assert "other operator parameters than the checkpoint's (values <3x3 kernel> vs <5x7 kernel>)" in (
        reconstruct_output(other)
    )


def test_a_definition_file_with_embedded_values_needs_no_kernel_file(tmp_path) -> None:
    from jfb_inverse.problems.registry import config_from_file_or_problem

    (tmp_path / "run.toml").write_text(
        'problem = "deblur"\n[operator]\nkind = "blur"\nkernel = "file"\npath = "gone.npy"\n'
        "values = [[0.0, 1.0], [1.0, 2.0]]\n"
    )
    # A run's problem.toml after the kernel file moved: relative paths used to be refused, absolute ones not.
    cfg = config_from_file_or_problem(None, tmp_path / "run.toml")
    assert float(blur_kernel(cfg.operator).sum()) == 1.0 and float(blur_kernel(cfg.operator).max()) == 0.5


def test_noise_records_compare_every_field_their_kind_uses(tmp_path) -> None:
    import json

    from jfb_inverse.measurements import check_provenance, provenance, provenance_path

    def noise(**fields: object):
        return resolve_config("deblur", overrides={"noise": fields})

    def sidecar(cfg) -> str:
        y = tmp_path / "y.npy"
        provenance_path(y).write_text(json.dumps(provenance(cfg, (1, 32, 32), seed=0)))
        return str(y)

    poisson = {"kind": "poisson", "gain": 100.0, "sigma": 0.05}
    # Poisson noise's Gaussian part can be relative: a record that differs there must warn (it did not).
    message = check_provenance(sidecar(noise(**poisson, relative=True)), noise(**poisson, relative=False), "c")
    assert message is not None and "relative True vs False" in message
    # Another noise kind is said as such, not as the other kind's fields set to None.
    message = check_provenance(sidecar(noise(kind="gaussian", sigma=0.05)), noise(**poisson), "c")
    assert message is not None and "kind 'gaussian' vs 'poisson')" in message and "None" not in message


def test_rounding_level_negative_kernel_entries_are_set_to_zero(tmp_path) -> None:
    kernel = np.array([[0.25, -1e-17, 0.25], [0.0, 0.5, 0.0]])
    np.save(tmp_path / "k.npy", kernel)
    expected = torch.tensor([[0.25, 0.0, 0.25], [0.0, 0.5, 0.0]])
    assert torch.equal(load_kernel(tmp_path / "k.npy")[0, 0], expected)
    cfg = resolve_config("deblur", overrides={"operator": {"kernel": "file", "values": kernel.tolist()}})
    assert torch.equal(blur_kernel(cfg.operator)[0, 0], expected)
