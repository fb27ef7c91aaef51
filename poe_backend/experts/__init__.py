"""Experts: analytic ones (torch only) and model families (diffusers/transformers).

Import model-family modules explicitly (``poe_backend.experts.flux`` ...); this package's
``__init__`` imports nothing heavy.
"""
