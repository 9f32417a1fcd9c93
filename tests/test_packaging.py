"""The library installs and imports without the `experiments` extra.

Builds the wheel from this checkout, installs it (no dependencies) into a fresh virtual environment that sees the
core dependencies of the test environment but not the extras (a meta-path blocker refuses to import them), and
imports `fm_jax` and its public modules from the installed wheel, outside the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = ("matplotlib", "tqdm", "ml_collections", "sklearn", "mlxtend", "tensorboardX")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy of the tracked sources, so the checkout gets no build/ or egg-info directories.
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "fm_jax"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(src, name)) or str(src), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), os.path.join(src, name))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (name,) = [p for p in os.listdir(out) if p.endswith(".whl")]
    return os.path.join(out, name)


def test_wheel_requires_no_experiment_package_outside_the_extra(wheel):
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        assert not any(n.startswith(("experiments/", "tests/")) for n in z.namelist())
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    for package in ("ml_collections", "absl-py", "matplotlib", "tqdm", "scikit-learn", "mlxtend", "tensorboardX"):
        assert not any(r.lower().startswith(package.lower()) for r in core), (package, core)
        assert any(r.lower().startswith(package.lower()) and "extra == \"experiments\"" in r for r in requires)


@pytest.mark.slow  # ~60 s on a loaded 2-core machine (importing jax in a fresh interpreter)
def test_wheel_imports_without_the_extras(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(wheel) as z:  # install = unpack a pure wheel into site-packages
        z.extractall(purelib)
    # The core dependencies come from the test environment's site-packages, after the wheel; the extras are refused.
    blocker = textwrap.dedent(f"""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {EXTRAS!r}:
                    raise ImportError("blocked extra: " + name)
        sys.meta_path.insert(0, _Block())
    """)
    with open(os.path.join(purelib, "_block_extras.py"), "w") as f:
        f.write(blocker)
    with open(os.path.join(purelib, "zz_deps.pth"), "w") as f:
        f.write("import _block_extras\n" + sysconfig.get_paths()["purelib"] + "\n")
    code = ("import fm_jax, fm_jax.training, fm_jax.checkpoint, fm_jax.distributed, fm_jax.models, fm_jax.data.toy, "
            "sys; print(fm_jax.__file__); "
            f"assert not [m for m in sys.modules if m.split('.')[0] in {EXTRAS!r}]")
    out = subprocess.run([python, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith(purelib), out.stdout
    # The blocker works: an extra cannot be imported in that environment.
    blocked = subprocess.run([python, "-c", "import matplotlib"], cwd=str(tmp_path), capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked extra" in blocked.stderr
