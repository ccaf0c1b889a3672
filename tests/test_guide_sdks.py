"""docs/guides/sdks.md (and the README's SDK blocks): every python block compiles, passes the user's
mypy --strict, and runs twice against a loopback server speaking its SDK's API: one charge, under
the operation's journaled UUID v4 key, the re-run answered from the journal.

The blocks are what users copy, so they use the SDKs' real addresses (api.stripe.com, Square's
production URL, api.increase.com) or https://api.example.com; a run points those at the server.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import square.client
import stripe._stripe_client

import samekey
from samekey.testing import INCREASE, PLAIN, SQUARE, STRIPE, Api, PaymentServer
from test_public_api import _users_mypy

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "sdks.md"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
EXAMPLE_URL = "https://api.example.com"


@dataclass(frozen=True)
class SdkBlock:
    marker: str  # text of that block and of no other in its file
    api: Api
    operation: str


def blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the first line of code, code) of every ```python block."""
    text = path.read_text()
    found = re.finditer(r"^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in found]


GUIDE_BLOCKS = [
    SdkBlock('"sdk-made"', PLAIN, "order-1042/charge"),
    SdkBlock("create(params=", STRIPE, "order-1042/pi"),
    SdkBlock("create_async(", STRIPE, "order-1043/pi"),
    SdkBlock("square.payments.create(", SQUARE, "order-1042/pay"),
    SdkBlock("= Increase(", INCREASE, "order-1042/transfer"),
    SdkBlock("AsyncIncrease(", INCREASE, "order-1043/transfer"),
    SdkBlock("/orders/{order_id}", PLAIN, "order-1042/create"),
]


def run_sdk_block(
    code: str,
    filename: str,
    line: int,
    spec: SdkBlock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run ``code`` twice on a server speaking
    ``spec.api``: one charge, the journaled key, a replay."""
    monkeypatch.chdir(tmp_path)
    with PaymentServer(tmp_path / "server.sqlite3", api=spec.api) as server:
        monkeypatch.setattr(stripe._stripe_client, "DEFAULT_API_BASE", server.url)
        monkeypatch.setattr(square.client, "_get_base_url", lambda **_: server.url)
        for name, value in [("STRIPE_API_KEY", "sk_test_123"), ("SQUARE_TOKEN", "EAAA-test")]:
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("INCREASE_API_KEY", "test-key")
        monkeypatch.setenv("INCREASE_BASE_URL", server.url)
        compiled = compile(
            "\n" * (line - 1) + code.replace(EXAMPLE_URL, server.url), filename, "exec"
        )
        for _run in range(2):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compiled, {"__name__": "docs_block"})
        charges, requests = server.charges(), server.requests()
    with samekey.Journal(tmp_path / "payments.sqlite3", read_only=True) as journal:
        record = journal.get(spec.operation)
    assert record is not None and record.state == "completed" and UUID4.fullmatch(record.key)
    assert len(charges) == 1 and charges[0]["key"] == record.key  # the key the server acted on
    assert [r["key"] for r in requests] == [record.key]  # the re-run was answered from the journal


def spec_block(spec: SdkBlock, found: list[tuple[int, str]]) -> tuple[int, str]:
    matches = [(line, code) for line, code in found if spec.marker in code]
    assert len(matches) == 1, f"marker {spec.marker!r} is in {len(matches)} blocks, not exactly one"
    return matches[0]


def test_every_guide_block_is_run() -> None:
    found = blocks(GUIDE)
    checked = [spec_block(spec, found) for spec in GUIDE_BLOCKS]
    assert [line for line, _ in found if (line, _) not in checked] == []


def test_every_guide_block_passes_the_users_mypy_strict(tmp_path: Path) -> None:
    found = blocks(GUIDE)
    for line, code in found:
        (tmp_path / f"block_{line}.py").write_text("\n" * (line - 1) + code)
    result = _users_mypy(tmp_path)
    report = re.sub(r"\S*block_\d+\.py:", "docs/guides/sdks.md:", result.stdout + result.stderr)
    assert result.returncode == 0, report


@pytest.mark.parametrize("spec", GUIDE_BLOCKS, ids=lambda spec: spec.operation)
def test_the_guide_block_charges_once_under_the_journaled_key(
    spec: SdkBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line, code = spec_block(spec, blocks(GUIDE))
    run_sdk_block(code, "docs/guides/sdks.md", line, spec, tmp_path, monkeypatch)
