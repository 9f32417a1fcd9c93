"""The README's quickstart runs as written, with each alternative its comments offer, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_quickstart_and_its_alternatives_run_as_written():
    blocks = _blocks()
    assert len(blocks) == 2, "the README's quickstart has two code blocks"
    first, second = blocks
    assert "P.AffinePath(P.CondOT())" in first and "fj.models.MLP(2, 2," in first
    # Each alternative the comments name, as a user would edit the two lines (one compiled call each, to stay
    # fast: the full budget runs once below).
    alternatives = [("P.KacPath()", "2, 2"), ("P.OscillationHGFPath()", "2, 2"), ("P.ForcePath()", "4, 2")]
    script = [first.replace("range(20)", "range(1)").replace("P.AffinePath(P.CondOT())", path)
              .replace("MLP(2, 2,", f"MLP({sizes},") for path, sizes in alternatives]
    script.append(first)
    script.append(second)
    code = "\n".join(f"exec(compile({s!r}, 'README block', 'exec'))" for s in script)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    # Three alternatives and the full quickstart print "(2000, 2) 100"; the guided block prints True.
    assert out.stdout.count("(2000, 2) 100") == 4, out.stdout
    assert lines[-1] == "True", out.stdout
