"""The HTTP service (DESIGN.md section 5): routes in ``app``, jobs and the worker in
``jobs``, token auth in ``auth``, bundle uploads in ``uploads``, input checks in
``validation``, health and task descriptions in ``info``, failure advice in ``errors``,
``poe-backend serve`` in ``cli``."""
