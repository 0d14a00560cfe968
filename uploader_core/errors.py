"""The engine's own error types.

Plugins translate their drivers' exceptions (psycopg, paramiko, OS errors) into these at the
boundary, with ``raise ... from exc``, so that the engine decides what to do from the type alone:

- :class:`TransientError`: try again later. The local files stay where they are.
- :class:`EndpointUnavailable`: a transient error of a whole endpoint (network down, server
  restarting, disk full on the server). The current pass stops instead of failing every
  remaining job against the same endpoint.
- :class:`PermanentJobError`: this job can never succeed as it is (bad document, bad id, empty
  video). Its files are moved to the failed directory with a reason. Never raised for anything
  that is not the job's own fault.
- :class:`ConfigurationError`: a setting or the set-up of an endpoint is wrong (credentials, host
  key, permissions, missing table). A human has to act; the engine backs off, and no job is ever
  quarantined because of it.
"""

from __future__ import annotations


class UploaderError(Exception):
    """Root of every error the engine reasons about.

    ``endpoint`` names the endpoint involved (``"sftp"``, ``"database"``), ``setting`` the
    configuration key path a person should look at. Messages never contain secrets.
    """

    def __init__(
        self, message: str, *, endpoint: str | None = None, setting: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.setting = setting

    def __str__(self) -> str:
        text = self.message
        if self.setting:
            text = f"{text} (setting: {self.setting})"
        return text


class TransientError(UploaderError):
    """Retry the job on a later pass; nothing about the job itself is wrong."""


class EndpointUnavailable(TransientError):
    """The endpoint as a whole cannot be used right now: stop the pass and back off."""


class Interrupted(TransientError):
    """The engine is stopping; the job was abandoned safely and will be retried."""


class PermanentJobError(UploaderError):
    """The job can never succeed as it is: quarantine it with this reason."""


class ConfigurationError(UploaderError):
    """A setting or an endpoint's set-up needs a human. Never quarantines a job."""


class InvalidConfiguration(ConfigurationError):
    """The configuration document itself is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        summary = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(summary)
