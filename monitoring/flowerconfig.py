"""Flower for Carina: ``celery -A workers flower --conf=monitoring/flowerconfig.py``.

Task names are the pipeline stages (``carina.<pipeline>.<stage>``); the columns below put
the stage, its state and the worker (whose node name ends in ``@<host id>``) first.
"""

address = "127.0.0.1"
port = 5555
natural_time = False
max_tasks = 10000
tasks_columns = "name,uuid,state,worker,received,started,runtime,args,result"
