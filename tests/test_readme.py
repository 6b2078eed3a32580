"""The README's Python example runs as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs_and_converges(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example; update this test when adding another"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    # Both solves converge, and the model restores the trained-for blur well above the blurred input
    # (23.2 dB for camera at 128 px, README's table).
    psnrs = [float(re.match(r"([\d.]+) dB", line).group(1)) for line in lines]
    assert psnrs[0] > 27.5 and psnrs[1] > 26.5
    assert all("'converged_fraction': 1.0" in line for line in lines)
