"""PoE Generation: a Blender extension that captures scenes into bundles for a
Product-of-Experts backend (Zhang et al. 2025, arXiv 2506.08894) and brings results back.

Imports bpy, numpy and the standard library only; never torch, never pip. Everything
registered is in :data:`CLASSES`, every operator is ``poe.*``.
"""

from __future__ import annotations

import bpy

from . import operators, operators_jobs, panel, preferences, properties
from .preferences import prefs

__all__ = ["CLASSES", "prefs", "register", "unregister"]

CLASSES = (
    preferences.POE_AddonPreferences,
    properties.POE_ObjectItem,
    properties.POE_SceneSettings,
    operators.POE_OT_capture,
    operators.POE_OT_object_add,
    operators.POE_OT_object_remove,
    *operators_jobs.CLASSES,
    panel.POE_UL_objects,
    panel.POE_PT_main,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.poe = bpy.props.PointerProperty(type=properties.POE_SceneSettings)


def unregister() -> None:
    operators_jobs.shutdown()
    del bpy.types.Scene.poe
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
