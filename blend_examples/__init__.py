"""Scripts that build the example .blend files from scratch (no binary assets).

Each module has ``build(path) -> Path`` and runs as ``python blend_examples/<name>.py OUT.blend``
with bpy as a module (or ``blender -b -P blend_examples/<name>.py -- OUT.blend``).
"""
