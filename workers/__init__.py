"""The Celery worker: ``celery -A workers worker`` (or ``carina worker``) loads the app and
every pipeline's tasks. Tasks are thin: resolve handles, call one op, publish, return."""

from queues.app import app
from workers import blur, boot, fastio_itk, nuclei, spleen  # noqa: F401  (registers signal handlers and tasks)

__all__ = ["app"]
