"""Add-on preferences (Edit > Preferences > Add-ons > PoE Generation), :func:`prefs` and
:func:`backend_settings` (the preferences with their defaults filled in)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import bpy

DEFAULT_BACKEND_URL = "http://127.0.0.1:7860"
DEFAULT_COMMAND = "poe-backend serve"


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
        name="Start command", default=DEFAULT_COMMAND,
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


@dataclass
class Settings:
    """The preferences every operator needs, defaults filled in."""

    url: str
    token: str
    command: str
    output_dir: Path
    as_background: bool = False


def output_root(configured: str) -> Path:
    """The preferences' output folder; else ``poe/`` beside the saved .blend; else a
    ``poe`` folder in the temporary directory."""
    if configured:
        return Path(bpy.path.abspath(configured))
    if bpy.data.filepath:
        return Path(bpy.data.filepath).parent / "poe"
    return Path(tempfile.gettempdir()) / "poe"


def backend_settings(context=None) -> Settings:
    """:class:`Settings` from the add-on preferences (the defaults when :func:`prefs` is
    None: classes registered by a script)."""
    preferences = prefs(context)
    return Settings(
        url=getattr(preferences, "backend_url", "") or DEFAULT_BACKEND_URL,
        token=getattr(preferences, "token", "") or "",
        command=getattr(preferences, "backend_command", "") or DEFAULT_COMMAND,
        output_dir=output_root(getattr(preferences, "output_dir", "") or ""),
        as_background=bool(getattr(preferences, "result_as_background", False)),
    )
