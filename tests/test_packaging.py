"""What `pip install .` ships: every package folder under server/ is listed in pyproject.toml.

The editable install the developers use maps the whole folder, so a package left out of the list imports
fine here and is missing from a real install (CI's `pip install '.[test]'`, a user's, the Docker image).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_for_setuptools():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    source = ROOT / setuptools["package-dir"]["nomoat"]
    folders = {".".join(("nomoat", *init.parent.relative_to(source).parts))
               for init in source.rglob("__init__.py")}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
