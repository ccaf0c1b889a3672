""".ci/run on a fresh Debian/Ubuntu machine: it installs what the README's commands need, then runs
them.

The script is run for real, in a copy of the checkout, with fakes first on PATH: a `python3`
whose ensurepip comes with the python3.X-venv package (as on Debian and Ubuntu), an `apt-get`
that records its calls and "installs" that package, a `sudo`, an `id`, and an `ls` that finds
PostgreSQL's initdb (that step is not tested here). The fake venv's pip and python record what
they are asked to run. `.ci/release-check` (which builds and installs the wheel) is a stand-in
here that records its call: .ci/run must run it after the tests, and only when they pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PYTHON3 = """#!/bin/bash
# python3 as Debian ships it: ensurepip (so `-m venv`) only once python$FAKE_PY-venv is installed
has_ensurepip() { [ -e "$FAKE_STATE/installed-python$FAKE_PY-venv" ] || [ -e \
"$FAKE_STATE/installed-python3-venv" ]; }
echo "python3 $*" >> "$FAKE_LOG"
case "$*" in
    "-c import ensurepip") has_ensurepip || { echo "ModuleNotFoundError: No module named \
'ensurepip'" >&2; exit 1; } ;;
    "-c "*version_info*) echo "$FAKE_PY" ;;
    "-m venv .venv")
        if ! has_ensurepip; then
            echo "The virtual environment was not created successfully because ensurepip is not \
available." >&2
            exit 1
        fi
        mkdir -p .venv/bin
        for tool in pip python; do
            # the tests pass, unless FAKE_TESTS_FAIL is set
            printf '#!/bin/bash\\necho ".venv/bin/%s $*" >> "$FAKE_LOG"\\n' "$tool" > \
".venv/bin/$tool"
            printf '[ -z "$FAKE_TESTS_FAIL" ] || [ %s != python ] || exit 1\\n' "$tool" >> \
".venv/bin/$tool"
            chmod +x ".venv/bin/$tool"
        done ;;
    *) echo "fake python3: unexpected $*" >&2; exit 99 ;;
esac
"""

APT_GET = r"""#!/bin/bash
echo "apt-get $* (uid $FAKE_UID_NOW, DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-})" >> "$FAKE_LOG"
if [ "$1" = install ]; then
    for package in "${@: -1}"; do
        case " $FAKE_APT_KNOWS " in *" $package "*) touch "$FAKE_STATE/installed-$package" ;;
            *) echo "E: Unable to locate package $package" >&2; exit 100 ;; esac
    done
fi
"""

SUDO = r"""#!/bin/bash
echo "sudo $*" >> "$FAKE_LOG"
FAKE_UID_NOW=0 exec "$@"
"""

ID = r"""#!/bin/bash
[ "$1" = -u ] && echo "$FAKE_UID_NOW"
"""

# `ls /usr/lib/postgresql/*/bin/initdb` finds it:
# the PostgreSQL step installs nothing on any machine
LS = """#!/bin/bash
exit 0
"""


def run_ci(
    tmp_path: Path,
    *,
    uid: int,
    py: str,
    apt_knows: str,
    preinstalled: str = "",
    tests_fail: bool = False,
) -> tuple[int, list[str], str]:
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy2(ROOT / ".ci" / "run", checkout / ".ci" / "run")
    (checkout / ".ci" / "release-check").write_text(
        '#!/bin/bash\necho "release-check" >> "$FAKE_LOG"\n'
    )
    (checkout / ".ci" / "release-check").chmod(0o755)
    bin_dir, state, log = tmp_path / "bin", tmp_path / "state", tmp_path / "log"
    bin_dir.mkdir()
    state.mkdir()
    log.touch()
    for name, text in {
        "python3": PYTHON3,
        "apt-get": APT_GET,
        "sudo": SUDO,
        "id": ID,
        "ls": LS,
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for package in preinstalled.split():
        (state / f"installed-{package}").touch()
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_STATE": str(state), "FAKE_PY": py, "FAKE_APT_KNOWS": apt_knows,
        "FAKE_UID_NOW": str(uid),
        "FAKE_TESTS_FAIL": "1" if tests_fail else "",
    }  # fmt: skip
    result = subprocess.run(
        ["bash", str(checkout / ".ci" / "run")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, log.read_text().splitlines(), result.stderr


README_TEST_COMMAND = [
    "python3 -m venv .venv",
    ".venv/bin/pip install -q -e .[test,docs]",
    ".venv/bin/python -m pytest -q",
    "release-check",  # after the tests: the sdist, the wheel, the demo from the wheel
]


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "user with sudo"])
def test_ci_installs_the_venv_package_of_the_interpreter_when_ensurepip_is_missing(
    tmp_path: Path, uid: int
) -> None:
    code, calls, stderr = run_ci(
        tmp_path, uid=uid, py="3.12", apt_knows="python3.12-venv python3-venv"
    )
    assert code == 0, stderr
    assert (
        "python3 3.12 has no ensurepip (python3 -m venv needs it): installing python3.12-venv"
        in stderr
    )
    install = "apt-get install -y -qq --no-install-recommends python3.12-venv"
    # apt-get always runs as root: directly as root, through sudo otherwise; never asks a question
    assert [call for call in calls if call.startswith("apt-get")] == [
        "apt-get update -qq (uid 0, DEBIAN_FRONTEND=)",
        f"{install} (uid 0, DEBIAN_FRONTEND=noninteractive)",
    ]
    assert [call for call in calls if call.startswith("sudo")] == (
        []
        if uid == 0
        else ["sudo apt-get update -qq", f"sudo env DEBIAN_FRONTEND=noninteractive {install}"]
    )
    # then the README's test command, verbatim, now that venv works
    assert calls[-4:] == README_TEST_COMMAND
    assert calls.index(f"{install} (uid 0, DEBIAN_FRONTEND=noninteractive)") < calls.index(
        "python3 -m venv .venv"
    )


def test_ci_falls_back_to_python3_venv_when_there_is_no_versioned_package(tmp_path: Path) -> None:
    code, calls, stderr = run_ci(tmp_path, uid=0, py="3.13", apt_knows="python3-venv")
    assert code == 0, stderr
    installs = [
        re.sub(r" \(uid.*", "", call) for call in calls if call.startswith("apt-get install")
    ]
    assert installs == [
        "apt-get install -y -qq --no-install-recommends python3.13-venv",
        "apt-get install -y -qq --no-install-recommends python3-venv",
    ]
    assert (
        sum(call.startswith("apt-get update") for call in calls) == 1
    )  # the package lists: fetched once
    assert calls[-4:] == README_TEST_COMMAND


def test_ci_leaves_a_python_that_has_ensurepip_alone(tmp_path: Path) -> None:
    code, calls, stderr = run_ci(
        tmp_path, uid=1000, py="3.12", apt_knows="", preinstalled="python3.12-venv"
    )
    assert code == 0, stderr
    assert not [call for call in calls if call.startswith(("apt-get", "sudo"))]
    assert calls == ["python3 -c import ensurepip", *README_TEST_COMMAND]


def test_ci_stops_with_a_message_when_no_package_gives_ensurepip(tmp_path: Path) -> None:
    # e.g. a Python of its own (not the distribution's)
    # first on PATH, for which apt has no venv package
    code, calls, stderr = run_ci(tmp_path, uid=0, py="3.12", apt_knows="")
    assert code == 1, stderr
    assert (
        "still has no ensurepip: neither python3.12-venv nor python3-venv could be installed for it"
        in stderr
    )
    assert "python3 -m venv .venv" not in calls


def test_ci_runs_the_readme_test_command_verbatim_then_the_release_check() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("# run the tests (what CI runs)\n", 1)[1].splitlines()[0]
    assert command == (
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test,docs]" && '
        ".venv/bin/python -m pytest -q"
    )
    steps = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert steps[-2:] == [command, ".ci/release-check"]
    assert os.access(ROOT / ".ci" / "release-check", os.X_OK)


def test_ci_stops_before_the_release_check_when_the_tests_fail(tmp_path: Path) -> None:
    # the fake venv's python fails: set -e ends .ci/run at the test command
    code, calls, _ = run_ci(
        tmp_path, uid=1000, py="3.12", apt_knows="", preinstalled="python3.12-venv", tests_fail=True
    )
    assert (
        code != 0 and calls[-1] == ".venv/bin/python -m pytest -q" and "release-check" not in calls
    )
