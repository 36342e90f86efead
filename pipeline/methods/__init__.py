"""Attribution methods: one module per method, each registering its kind (pipeline/methods/
registry.py). Importing this package imports every module in it, so a new method is one new
file (plus its test) and nothing else."""

import importlib
import pkgutil

from fidoflow.pipeline.methods.base import Attribution, Method
from fidoflow.pipeline.methods.registry import KINDS, MethodSpec, kind, parse_methods, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "Attribution", "Method", "MethodSpec", "kind", "parse_methods", "register"]
