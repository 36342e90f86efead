"""fidoflow: archive-scale perturbation attribution for fine-grained image classifiers.

The checkout's top folders are this package's parts (pyproject.toml maps them): ``pipeline``
(the domain, no Prefect or Dask), ``storage`` (the run folder) and ``flows`` (Prefect wiring),
imported as ``fidoflow.pipeline``, ``fidoflow.storage`` and ``fidoflow.flows``.
"""
