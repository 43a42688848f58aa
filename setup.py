"""The packages the wheel holds, found rather than listed (the rest is in pyproject.toml).

Every package under src/ (a new one can never be left out of the wheel again, as
``i2vedit.app`` once was), plus the top-level conf/ folder shipped as the package
``i2vedit.conf`` (pyproject.toml maps it in ``package-dir``): a
``[tool.setuptools.packages.find]`` table only finds packages where they lie, and pyproject.toml
cannot both find packages and list one more.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "i2vedit.conf"])
