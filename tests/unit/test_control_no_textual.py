"""The headless core never imports Textual: ``uploader status`` and the engine stay light."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import uploader_core.engine, uploader_core.cli, uploader_core.control
import uploader_core.control_client, uploader_core.status
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "uploader_tui"))
print(",".join(heavy))
"""


def test_the_core_never_imports_textual() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_uploader_status_never_imports_textual() -> None:
    probe = ("import sys\nfrom uploader_core import cli\n"
             "code = cli.main(['status', '--socket', '/nonexistent/u.sock'])\n"
             "assert 'textual' not in sys.modules, 'textual was imported'\n"
             "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 3, result.stderr
