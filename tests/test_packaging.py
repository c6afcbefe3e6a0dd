"""Every Python package in the checkout is installed (pyproject lists packages explicitly)."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
TOP = {"repro": "repro", "experiments": "repro.experiments", "kernels": "repro.kernels"}


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in TOP.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed
