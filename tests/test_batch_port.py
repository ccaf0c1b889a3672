"""examples/batch_invoices.py, when the port its
local server must use is taken, says so in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "batch_invoices.py"


def test_batch_on_a_taken_port_says_which_port_and_what_to_do(tmp_path: Path) -> None:
    # Runs on one state folder reuse its server's port (the journal's URLs name it). Something
    # else listening there (or a run still going) must get a message, not an OSError traceback.
    state = tmp_path / "state"
    state.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        (state / "server-port").write_text(str(port))
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), "--state", str(state), "--sample-size", "3"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "OSError" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert message.startswith(f"batch_invoices.py: port {port} on 127.0.0.1 is already in use"), (
        message
    )
    assert (
        "another run on this state folder may still be going (let it finish or stop it)" in message
    )
    assert f"--state {state}-2" in message  # the way out that needs nothing stopped
    assert "paid" not in result.stdout  # nothing was sent
    assert not (state / "journal.sqlite3").exists()
