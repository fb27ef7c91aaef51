"""Save exactly what capture changes and put it back on exit, also after an exception.

The pattern of BlenderProc's ``UndoAfterExecution``, but explicit: no undo stack (which
bpy as a module does not have), each change goes through :meth:`SceneState.set`, which
records the old value the first time a property is touched. Leaving the ``with`` block
restores the values in reverse order, then the frame.
"""

from __future__ import annotations

from typing import Any


class SceneState:
    """Context manager: ``with SceneState(scene) as state: state.set(owner, "attr", value)``.

    ``owner`` is any bpy struct (scene.render, scene.cycles, an object, a view layer).
    On exit every touched attribute gets its original value back, in the order they were
    first touched, so a setting that constrains others (``image_settings.media_type`` before
    ``file_format`` before ``color_depth``) comes back first; a value that is still refused
    (an enum item valid only after a later restore) is retried after the others. Then the
    scene goes back to its original frame and subframe.
    """

    def __init__(self, scene) -> None:
        self.scene = scene
        self._saved: list[tuple[Any, str, Any]] = []
        self._seen: set[tuple[int, str]] = set()

    def __enter__(self) -> "SceneState":
        self._frame = (self.scene.frame_current, self.scene.frame_subframe)
        return self

    def remember(self, owner, *attributes: str) -> None:
        """Record attributes before any of them changes: needed where setting one changes
        another (``image_settings.media_type`` resets ``file_format`` and ``color_depth``)."""
        for attribute in attributes:
            if hasattr(owner, attribute):
                key = (owner.as_pointer(), attribute)
                if key not in self._seen:
                    self._seen.add(key)
                    self._saved.append((owner, attribute, _copy(getattr(owner, attribute))))

    def set(self, owner, attribute: str, value) -> None:
        """Set ``owner.attribute = value``, remembering the first original value."""
        self.remember(owner, attribute)
        if getattr(owner, attribute) != value:
            setattr(owner, attribute, value)

    def restore(self) -> None:
        """Put every touched attribute back, then the frame; safe to call twice."""
        pending = list(self._saved)
        while pending:
            refused = []
            for owner, attribute, value in pending:
                try:
                    if getattr(owner, attribute) != value:
                        setattr(owner, attribute, value)
                except (TypeError, ValueError):
                    refused.append((owner, attribute, value))
            if len(refused) == len(pending):
                owner, attribute, value = refused[0]
                setattr(owner, attribute, value)  # raise the real error
            pending = refused
        self._saved.clear()
        self._seen.clear()
        frame, subframe = self._frame
        if (self.scene.frame_current, self.scene.frame_subframe) != (frame, subframe):
            self.scene.frame_set(frame, subframe=subframe)

    def __exit__(self, *exc_info) -> None:
        self.restore()


def _copy(value):
    """bpy returns live arrays for vector properties; keep a plain copy."""
    if hasattr(value, "__len__") and not isinstance(value, str) and not hasattr(value, "as_pointer"):
        return tuple(value)
    return value
