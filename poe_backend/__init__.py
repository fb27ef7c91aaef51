"""Product-of-Experts visual generation backend.

Importing this package pulls in nothing heavy: `poe_backend.bundle` is stdlib-only (the
Blender add-on shares it), `poe_backend.sampling` needs torch only, and only
`poe_backend.experts` imports diffusers/transformers.
"""

__version__ = "0.1.0"
