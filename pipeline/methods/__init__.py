"""Attribution methods: one module per method, each registering its kind (pipeline/methods/
registry.py). Importing this package registers every kind."""

from pipeline.methods import fido, gradcam, ig, occlusion, saliency, smoothgrad  # noqa: F401
from pipeline.methods.base import Attribution, Method
from pipeline.methods.registry import KINDS, MethodSpec, kind, parse_methods, register

__all__ = ["KINDS", "Attribution", "Method", "MethodSpec", "kind", "parse_methods", "register"]
