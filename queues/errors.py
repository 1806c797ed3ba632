"""The exceptions of the front door.

::

    CarinaError
     ├── ConfigError          a CARINA_* setting is malformed
     ├── UnknownPipeline      no pipeline of that name
     ├── InvalidJobRequest    a parameter of a submission is missing or malformed
     ├── BrokerUnavailable    Redis cannot be reached
     └── UnknownJob           no job of that id
"""

from __future__ import annotations


class CarinaError(Exception):
    """Base of every error raised by :mod:`queues`."""


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

