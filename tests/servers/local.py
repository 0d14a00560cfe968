"""The local-process provider: PostgreSQL and sshd run from the distribution's packages.

Used wherever no Docker engine is available (CI here, a fresh Debian machine). The servers
listen on free loopback ports, never on the system's own 5432 or 22.
"""

from .local_postgres import LocalPostgres
from .local_sshd import LocalSshd, make_sftp_dirs

__all__ = ["LocalPostgres", "LocalSshd", "make_sftp_dirs"]
