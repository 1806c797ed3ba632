"""The front door: settings, the Celery app's configuration, the pipeline catalogue, submit,
job status and the CLI. It names worker tasks by string and never imports ``workers`` or
``ops``."""
