"""Flower for Carina: ``carina flower`` (or ``celery -A queues.app flower --conf=monitoring/flowerconfig.py``).

Task names are the pipeline stages (``carina.<pipeline>.<stage>``); the columns below put the
stage, its state and the worker (whose node name ends in ``@<host id>``) first. A running
stage that counts its work (windows, tiles) shows ``PROGRESS`` with ``{"job", "stage", "done",
"total", "percent"}`` in its result. ``carina flower`` adds basic auth from ``CARINA_FLOWER_AUTH`` (user:password) and
refuses to listen beyond loopback without it. Flower serves its own Prometheus metrics at
``/metrics``; ``carina metrics`` serves Carina's (jobs, stages, queues, FastIO).
"""

# The port is always given by `carina flower` (CARINA_FLOWER_PORT); the address stays on
# loopback unless it is given too.
address = "127.0.0.1"
natural_time = False
max_tasks = 10000
tasks_columns = "name,uuid,state,worker,received,started,runtime,args,result"
