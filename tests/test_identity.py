"""Who holds a lease (_identity.py): owner ids (a forked child's own pid), the pid scope, and when
an owner is judged dead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import samekey
from client_helpers import make_client


def test_a_lease_holder_is_never_signalled_where_kill_would_terminate_it(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on Windows os.kill(pid, 0) terminates the process: a live lease holder must wait out its lease
    with make_client(journal_path) as client:
        engine = client.engine
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            owner = f"{engine.owners.host}/{sleeper.pid}/{samekey._identity.PID_SCOPE}/tag-1"
            signalled: list[int] = []
            monkeypatch.setattr(os, "kill", lambda pid, sig: signalled.append(pid))
            monkeypatch.setattr(os, "name", "nt")
            assert engine.owners.is_dead(owner) is False and signalled == []
            monkeypatch.undo()
            assert (
                engine.owners.is_dead(owner) is False
            )  # alive, on POSIX: kill(pid, 0) only probes
            sleeper.kill()
            sleeper.wait()
            assert engine.owners.is_dead(owner) is True
        finally:
            sleeper.kill()
            sleeper.wait()


def test_a_pid_from_another_pid_namespace_or_boot_is_never_judged_dead(journal_path: Path) -> None:
    # Sidecar containers of one pod share a hostname, not their pids: a live lease holder in the
    # other container must not be taken over because the same pid number is free here.
    with make_client(journal_path) as client:
        engine = client.engine
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # a pid that runs nothing here
        scope = samekey._identity.PID_SCOPE
        assert engine.owners.is_dead(f"{engine.owners.host}/{gone.pid}/{scope}/tag-1") is True
        assert (
            engine.owners.is_dead(f"{engine.owners.host}/{gone.pid}/4026539999.0badb007/tag-1")
            is False
        )
        assert (
            engine.owners.is_dead(f"{engine.owners.host}/{gone.pid}/tag-1") is False
        )  # older samekey: no scope
        assert engine.owners.new().split("/")[2] == scope


def test_a_forked_child_leases_under_its_own_pid(journal_path: Path) -> None:
    engine = samekey.Client(journal=journal_path).engine
    parent_owner = engine.owners.new()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(writer, engine.owners.new().encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child_owner = pipe.read()
    os.waitpid(pid, 0)
    engine.journal.close()
    assert parent_owner.split("/")[1] == str(os.getpid())
    assert child_owner.split("/")[1] == str(pid), (
        "a dead child's lease must be recognised as the child's"
    )
