"""The pytest plugin as a user gets it: the built wheel in a fresh venv, and a project of its own.

One venv has the wheel with the ``testing`` extra and runs the README's example project in
pytest-asyncio's strict mode (the options fixture, the marker, a fault test that must not wait
on backoffs); the other has the wheel and pytest only, and its test that asks for a fixture must
fail with the plugin's message. The wheel's dependencies are fetched once, from the package
registries pip is configured with, and both venvs are installed from them at once: the module
takes about 30 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rdfunnel.testing.plugin import NEEDS_PYTEST_ASYNCIO

REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 300  # seconds; a cold pip cache downloads aiohttp and friends

#: What the subprocesses must not inherit from this test run.
_LEAKS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")

README = REPO / "README.md"
SECTION = "## Testing your code: the pytest plugin"


def readme_project() -> dict[str, str]:
    """The project the README's pytest section shows: each block that starts with ``# <file>``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"```(?:py|ini)\n# (\S+)\n(.*?)```", section, flags=re.S))
    assert set(files) == {"pytest.ini", "conftest.py", "test_funnels.py"}, set(files)
    return files


#: Run next to the README's tests: the rdfunnel they import is the wheel's, not this checkout.
FROM_THE_WHEEL = """
from pathlib import Path

import rdfunnel


def test_rdfunnel_comes_from_the_wheel():
    here = Path(rdfunnel.__file__).resolve()
    assert "site-packages" in here.parts
    assert not here.is_relative_to({repo!r})
"""

MISSING_TESTS = """
def test_the_plugin_does_not_get_in_the_way():
    pass


def test_a_fixture_says_what_is_missing(rdstation):
    raise AssertionError("never reached")
"""


def _env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in _LEAKS}


def _python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def _run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two venvs with the wheel built from this checkout: ``testing`` (the extra) and ``bare``."""
    root = tmp_path_factory.mktemp("plugin-wheel")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", REPO, "-w", root / "dist"],
        cwd=root,
        timeout=INSTALL_TIMEOUT,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("rdfunnel-*.whl")
    # Resolved once, from the registries pip is configured with; both venvs install from here.
    house = root / "wheelhouse"
    fetched = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", f"{wheel}[testing]", "-w", house],
        cwd=root,
        timeout=INSTALL_TIMEOUT,
    )
    assert fetched.returncode == 0, fetched.stderr
    wanted = {"testing": [f"{wheel}[testing]"], "bare": [str(wheel), "pytest"]}
    installs = {}
    for name, requirements in wanted.items():
        made = _run([sys.executable, "-m", "venv", "--without-pip", root / name], root, 60)
        assert made.returncode == 0, made.stderr
        # This interpreter's pip installs into the new venv: no pip of its own to set up there.
        command = [sys.executable, "-m", "pip", "--python", str(_python(root / name)), "install"]
        command += ["-q", "--no-index", "--find-links", str(house), *requirements]
        installs[name] = subprocess.Popen(
            command, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for name, process in installs.items():
        _, errors = process.communicate(timeout=INSTALL_TIMEOUT)
        assert process.returncode == 0, f"installing into the {name} venv failed:\n{errors}"
    return {name: root / name for name in wanted}


def _project(where: Path, files: dict[str, str]) -> Path:
    where.mkdir()
    for name, text in files.items():
        (where / name).write_text(text, encoding="utf-8")
    return where


def test_the_readmes_project_runs_in_strict_mode_from_the_wheel(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    files = readme_project()
    assert "asyncio_mode = strict" in files["pytest.ini"]
    files["test_wheel.py"] = FROM_THE_WHEEL.format(repo=str(REPO))
    project = _project(tmp_path / "project", files)
    command = [_python(venvs["testing"]), "-m", "pytest", "-v", "-p", "no:cacheprovider"]
    done = _run([*command, "-W", "error"], project, 120)  # no warning either
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout


def test_without_pytest_asyncio_the_fixtures_say_what_is_missing(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    python = _python(venvs["bare"])
    probe = _run([python, "-c", "import pytest_asyncio"], tmp_path, 60)
    assert probe.returncode != 0  # the venv really lacks it
    project = _project(tmp_path / "project", {"test_funnels.py": MISSING_TESTS})
    done = _run([python, "-m", "pytest", "-rE", "-p", "no:cacheprovider"], project, 120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert NEEDS_PYTEST_ASYNCIO in done.stdout, done.stdout
    assert "1 passed, 1 error" in done.stdout, done.stdout
    assert "AssertionError" not in done.stdout
