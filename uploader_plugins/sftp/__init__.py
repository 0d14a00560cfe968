"""The built-in SFTP plugin: phase 2 of the upload transaction, on paramiko.

The plugin is the class :class:`SftpPlugin`; the plugin host makes one instance per engine.
Modules:

- :mod:`.settings`: the ``uploader.sftp`` schema, its validated form and the private key;
- :mod:`.hostkeys`: host key verification against an OpenSSH ``known_hosts`` file;
- :mod:`.connection`: the SSH connection and SFTP session, with timeouts and interrupts;
- :mod:`.failures`: what a failed SFTP operation means to the engine;
- :mod:`.transfer`: streaming each file to a temporary name and renaming it into place;
- :mod:`.resume`: which blocks prove a partial remote file is a prefix of the video, and the
  hash states that spare hashing the same prefix again on every resume;
- :mod:`.throttle`: the bandwidth cap;
- :mod:`.plugin`: the hooks.
"""

from .plugin import SftpPlugin

__all__ = ["SftpPlugin"]
