"""Product-of-Experts visual generation backend.

Importing this package pulls in nothing heavy: `poe_backend.bundle` is stdlib-only (the
Blender add-on shares it), `poe_backend.models` (specs, lookup, the weights manager) is
torch-free, `poe_backend.sampling` and `poe_backend.runtime` need torch only, and only
`poe_backend.families` imports diffusers/transformers.
"""

__version__ = "0.1.0"
