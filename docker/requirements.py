"""Print the project's runtime dependencies from pyproject.toml, one per line.

The images install these in a layer of their own, before the sources are copied, so editing
code does not reinstall two gigabytes of packages; scripts/container-check uses the same list
to gather wheels on the host.
"""
import sys
import tomllib
from pathlib import Path

pyproject = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
with pyproject.open("rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
