"""The exceptions of the front door.

::

    CarinaError              the front door's base (carina/ adds ServiceError beneath it)
     ├── ConfigError          a CARINA_* setting is malformed
     ├── UnknownPipeline      no pipeline of that name
     ├── InvalidJobRequest    a parameter of a submission is missing or malformed
     ├── PathRefused          a path in a request leads outside the data root
     ├── BrokerUnavailable    Redis cannot be reached
     ├── UnknownJob           no job of that id
     └── JobStateError (also ValueError)  a job asked to take a state it cannot (a bug, not input)
"""

from __future__ import annotations


class CarinaError(Exception):
    """Base of every error raised by the front door (:mod:`queues`) and the composition
    root (:mod:`carina`); the CLI reports one as a single line."""


class ConfigError(CarinaError, ValueError):
    pass


class UnknownPipeline(CarinaError, KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown pipeline {name!r}; known pipelines: {', '.join(known)}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidJobRequest(CarinaError, ValueError):
    pass


class BrokerUnavailable(CarinaError):
    pass


class UnknownJob(CarinaError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class PathRefused(CarinaError):
    """A path in a request points outside the data root."""


class JobStateError(CarinaError, ValueError):
    pass
