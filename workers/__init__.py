"""The Celery worker: ``celery -A workers worker`` (or ``carina worker``) loads the app, every
stage kind of the project, and those Python packages add through the entry-point group
``carina.stages`` (each entry point names the module that registers its task). Tasks are
thin: resolve handles, call one op, publish, return."""

from importlib import metadata

from queues.app import app
from queues.catalogue import STAGES_GROUP
from workers import blur, boot, fastio_itk, nuclei, segmentation  # noqa: F401  (registers signal handlers and tasks)

for _entry_point in metadata.entry_points(group=STAGES_GROUP):
    _entry_point.load()

__all__ = ["app"]
