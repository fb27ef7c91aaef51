"""Experts: analytic ones (torch only) and model families (diffusers/transformers).

Models: ``specs`` (what a role is), ``lookup`` (where its files are), ``model_cache`` (one
loaded instance per weights, eviction), ``placement`` (where it runs); ``registry`` re-exports
them. Families: ``<family>_models`` (roles, torch-free), ``<family>_tiny`` (tiny builders for
tests), ``<family>`` (the runtime: ``flux.FluxRuntime``, ``vqascore.VQAScorer``, ...).

Import model-family modules explicitly (``poe_backend.experts.flux`` ...); this package's
``__init__`` imports nothing heavy.
"""
