"""Tasks by name. Each module registers one :class:`~poe_backend.tasks.base.Task`."""
