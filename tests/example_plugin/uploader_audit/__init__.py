"""An example third-party plugin, installed like any other distribution.

It keeps an audit log of archived events and refuses events from sites listed in its own
configuration section::

    uploader:
      audit:
        log_path: /var/log/uploader-audit.log
        blocked_sites: [private-garden]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uploader_core import PermanentJobError, hookimpl
from uploader_core.config import Field, Section


class AuditPlugin:
    def __init__(self) -> None:
        self.log_path = ""
        self.blocked: list[str] = []

    @hookimpl
    def uploader_config_sections(self) -> Mapping[str, Section]:
        return {"audit": {"log_path": Field(str), "blocked_sites": Field(list, [])}}

    @hookimpl
    def uploader_configure(self, config: Mapping[str, Any]) -> None:
        self.log_path = config["audit"]["log_path"]
        self.blocked = config["audit"]["blocked_sites"]

    @hookimpl
    def pre_upload(self, job: Any) -> None:
        site = job.metadata.get("site")
        if site in self.blocked:
            raise PermanentJobError(f"site {site!r} is blocked by the audit plugin")

    @hookimpl
    def post_archive(self, job: Any) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"archived {job.event_id} {job.json_sha256}\n")
