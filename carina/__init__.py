"""The composition root: the ``carina`` CLI, the demo, and the launchers of local services
(redis-server, Triton, worker and API processes) that the demo, the tests and the benches
share.

Only this package may import every other one; ``queues`` (the front door), ``monitoring``,
``workers``, ``ops`` and ``fastio`` never import it. See DESIGN.md for the layers.
"""
