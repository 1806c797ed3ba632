"""The composition root's exceptions: part of the front door's tree (the CLI reports every
:class:`~queues.errors.CarinaError` as one line).

::

    CarinaError (queues.errors)
     └── ServiceError         a local service (redis-server, Triton, a worker, the API) failed to start
"""

from __future__ import annotations

from queues.errors import CarinaError


class ServiceError(CarinaError):
    pass
