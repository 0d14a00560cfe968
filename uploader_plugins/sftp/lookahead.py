"""A job's first requests, sent while the job before it is still finishing.

An upload starts with one round trip that opens its two temporary files (and looks at what an
earlier attempt left of the video), and ends with two that rename them into place, one after
the other. When the engine already knows which job comes next (``upcoming``), the transfer
sends that job's opens before it waits for its own last answers: the next transfer then
finds them answered, and a job costs three round trips instead of four. Over a cellular link
that is a quarter of a job's time.

The opens are requests like any other: a file opened ahead is created under its temporary
name, which is what the job would have done a moment later. The next job may turn out to be
another one (the expected job was quarantined, the pass stopped, a reload changed the remote
directories), or the connection may be gone: the opening is then released, its handles
closed on a live connection, and the job opens its files itself.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass

from .connection import Session
from .pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opening:
    """The stat of a job's temporary video and the opens of both temporary files, sent on
    ``session`` through ``pipeline``; their request numbers."""

    event_id: str
    session: Session
    pipeline: Pipeline
    video_temporary: str
    json_temporary: str
    stat: int
    video_open: int
    json_open: int

    @classmethod
    def send(cls, event_id: str, session: Session, video_temporary: str,
             json_temporary: str) -> Opening:
        """Send the three requests without waiting for their answers.

        The video's open does not truncate (an earlier attempt's file may be continued); the
        JSON's does, it is always written whole.
        """
        pipeline = Pipeline(session.sftp)
        stat = pipeline.stat(video_temporary)
        video_open = pipeline.open_for_writing(video_temporary, truncate=False)
        json_open = pipeline.open_for_writing(json_temporary, truncate=True)
        return cls(event_id, session, pipeline, video_temporary, json_temporary, stat,
                   video_open, json_open)

    def release(self) -> None:
        """Close the files it opened, if its connection still works; never raises.

        Both closes go out before either answer is waited for: one round trip. The files
        stay: by now another worker may be uploading the same event into them.
        """
        if not self.session.alive():
            return  # the server closed them with the connection
        pipeline = self.pipeline
        handles = []
        for request in (self.video_open, self.json_open):
            with suppress(Exception):
                handles.append(pipeline.handle(request))
        closes = []
        for handle in handles:
            with suppress(Exception):
                closes.append(pipeline.close(handle))
        for close in closes:
            with suppress(Exception):
                pipeline.status(close)


class Lookahead:
    """The opening sent for the job expected next: at most one, kept between transfers."""

    def __init__(self) -> None:
        self._opening: Opening | None = None
        # For logs and tests: openings taken by their job, and released unused.
        self.used = 0
        self.released = 0

    @property
    def pending(self) -> bool:
        return self._opening is not None

    def keep(self, opening: Opening) -> None:
        self._opening = opening

    def take(self, event_id: str, session: Session, video_temporary: str,
             json_temporary: str) -> Opening | None:
        """The opening sent for exactly this job, files and connection, if there is one; any
        other is released."""
        opening, self._opening = self._opening, None
        if opening is None:
            return None
        if (opening.event_id, opening.video_temporary, opening.json_temporary) == (
                event_id, video_temporary, json_temporary) and opening.session is session \
                and session.alive():
            self.used += 1
            return opening
        log.debug("the files opened ahead for %s are not used (next came %s); closing them",
                  opening.event_id, event_id)
        opening.release()
        self.released += 1
        return None

    def forget(self) -> None:
        """The connection is being dropped: its open files go with it."""
        self._opening = None
