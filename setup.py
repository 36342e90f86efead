"""The package list, found from the checkout's folders so that no module can miss the wheel.

The top folders ``pipeline/``, ``storage/`` and ``flows/`` install as ``fidoflow.pipeline``,
``fidoflow.storage`` and ``fidoflow.flows`` (``./__init__.py`` is ``fidoflow`` itself); every
sub-folder with an ``__init__.py`` comes along. Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PARTS = ("pipeline", "storage", "flows")


class BuildPy(build_py):
    """The checkout's root is the ``fidoflow`` package: this file is not one of its modules."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        return [found for found in super().find_package_modules(package, package_dir)
                if (found[0], found[1]) != ("fidoflow", "setup")]


setup(
    packages=["fidoflow", *(f"fidoflow.{name}" for name in find_packages(
        include=[pattern for part in PARTS for pattern in (part, f"{part}.*")]))],
    package_dir={"fidoflow": "."},
    cmdclass={"build_py": BuildPy},
)
