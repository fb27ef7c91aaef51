"""Model families, one folder each; the unit a new model is added as.

``<family>/declaration.py`` (torch-free, imported by :mod:`poe_backend.models.specs` on first
lookup): the family's roles per preset (``register_family``), the role groups tasks and the
weights manager read, and the full-size configs the planner sizes models with. ``runtime.py``:
what a diffusers pipeline owns for one job (a :class:`~poe_backend.runtime.family.FamilyRuntime`),
``experts.py``: its velocity experts, ``tiny.py``: random tiny builders for tests. ``analytic``
holds the closed-form experts (Gaussian mixtures, the disc reward, the Gaussian around a
render): torch only, no weights.

This package's ``__init__`` imports nothing; import family modules explicitly
(``poe_backend.families.flux.runtime``).
"""
