"""Mask metrics, one registered class each (``base.py``); importing this package imports every
module in it, so a new metric is one new file with one ``@register``ed class (and its test)."""

import importlib
import pkgutil

from fidoflow.pipeline.metrics.base import (
    METRICS,
    Column,
    Measured,
    Metric,
    MetricBatch,
    columns,
    fields,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METRICS", "Column", "Measured", "Metric", "MetricBatch", "columns", "fields"]
