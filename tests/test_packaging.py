"""Fresh installs get what CI tested: bounded dependencies, constraints.txt pinning them, and CI
installing through it with the README's own command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the tests' own interpreter)

REPO = Path(__file__).resolve().parents[1]
UPPER = {"<", "<=", "==", "~=", "==="}  # operators that cap the version


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "edgeasr"]  # edgeasr[reference]: the extra itself


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert m, f"constraints.txt: {line!r} is not a name==version pin"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = m.group(2)
    return pins


def test_every_direct_dependency_has_an_upper_bound():
    unbounded = [str(r) for r in _requirements() if not any(s.operator in UPPER for s in r.specifier)]
    assert not unbounded, f"no upper bound in pyproject.toml: {unbounded}"


def test_constraints_pin_every_dependency_inside_its_bounds():
    pins = _pins()
    assert "edgeasr" not in pins  # the project itself is installed from the checkout
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"


def _readme_block_after(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(re.escape(heading) + r"\s*```bash\n(.*?)\n```", text, re.S)
    assert m, f"README: no bash block after {heading!r}"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command_with_the_constraints():
    readme = _readme_block_after("Install and run the tests:")
    # The last command of .ci/run is the README's, verbatim (the lines before it install the
    # browser that tests/test_mlflow_ui.py drives).
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == readme
    assert sum(line.startswith("python3 -m venv") for line in ci) == 1
    assert "pip install -c constraints.txt -e '.[test]'" in readme
    assert "pip install -c constraints.txt -e '.[reference]' " in _readme_block_after("on the embedded default corpus:")
