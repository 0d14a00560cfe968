"""The Data Uploader's engine: scanning, the upload transaction, hooks and configuration."""

from .engine import DataUploader
from .errors import (
    ConfigurationError,
    EndpointUnavailable,
    Interrupted,
    PermanentJobError,
    TransientError,
    UploaderError,
)
from .job import CheckResult, Job, JobResult, Outcome, Phase, RecordState, TransferReceipt
from .plugin import hookimpl

__all__ = [
    "CheckResult",
    "ConfigurationError",
    "DataUploader",
    "EndpointUnavailable",
    "Interrupted",
    "Job",
    "JobResult",
    "Outcome",
    "PermanentJobError",
    "Phase",
    "RecordState",
    "TransferReceipt",
    "TransientError",
    "UploaderError",
    "hookimpl",
]
