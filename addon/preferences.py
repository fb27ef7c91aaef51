"""Add-on preferences (Edit > Preferences > Add-ons > PoE Generation) and :func:`prefs`."""

from __future__ import annotations

import bpy

DEFAULT_BACKEND_URL = "http://127.0.0.1:7860"


class POE_AddonPreferences(bpy.types.AddonPreferences):
    """Where the backend is and where bundles go; saved with the user's preferences."""

    bl_idname = __package__

    backend_url: bpy.props.StringProperty(
        name="Backend URL", default=DEFAULT_BACKEND_URL,
        description="Base URL of the PoE backend (a local server or an SSH tunnel to a GPU box)",
    )
    token: bpy.props.StringProperty(
        name="Token", default="", subtype="PASSWORD",
        description="Bearer token printed by 'poe-backend serve' (stored in the backend's config dir)",
    )
    backend_command: bpy.props.StringProperty(
        name="Start command", default="poe-backend serve",
        description="Command line that starts a local backend in its own environment",
    )
    output_dir: bpy.props.StringProperty(
        name="Output folder", default="", subtype="DIR_PATH",
        description="Where scene bundles and results are written; empty: a 'poe' folder next to the .blend file, or the temporary folder for unsaved files",
    )

    result_as_background: bpy.props.BoolProperty(
        name="Result as camera background", default=False,
        description="Show image results as the camera's background image instead of an image plane",
    )

    def draw(self, context) -> None:
        layout = self.layout
        for name in ("backend_url", "token", "backend_command", "output_dir", "result_as_background"):
            layout.prop(self, name)


def prefs(context=None) -> POE_AddonPreferences | None:
    """This add-on's preferences from ``context`` (default ``bpy.context``); ``None`` when
    the classes were registered by a script (``register()``) rather than enabled as an
    add-on, so callers fall back to the defaults."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return None if addon is None else addon.preferences
