"""The docs' code is what users copy: every ```python block must compile, type-check and run.

The docs are README.md and every page under docs/ (the MkDocs site, `mkdocs.yml`).

- **Found**: every ```python block of those files, with the file and line its code starts on.
  Every fenced block is one of the languages in `FENCES`, so no python hides under another name.
- **Compiled** as it stands, with nothing added: a user pastes it as it is.
- **Type-checked**: all blocks are written as modules into one folder and checked by one
  `mypy --strict` run (`_users_mypy`, the users'-side check of test_public_api.py). Each module
  keeps the block's code on its own line numbers, and the report names FILE:LINE. A misspelt
  keyword of samekey's own signatures, a name samekey no longer has, a wrong type fail here.
- **Fragments**: a few blocks use a name the prose around them stands for (`url`, `payload`,
  `path`, `token`) or show no imports. Rather than marking the docs (they stay exactly what
  users read), `SNIPPETS` below gives such a block a minimal preamble: imports and those names,
  nothing else, never a change to the block's own text. The mypy module and the run both start
  with it. `myshop` (the user's own code the pytest example imports) is a module written next
  to the blocks; the pytest example, like most test files, does not annotate its functions, so
  its preamble is the inline setting `# mypy: allow-untyped-defs` (their bodies are still checked,
  with --strict's other flags).
- **Run**: each block runs against a loopback `PaymentServer` (its `https://api.example.com`
  style base URL rewritten to the server's URL), in `tmp_path` as the current folder (a relative
  journal path lands there; the default journal is in tmp_path through $SAMEKEY_JOURNAL, see
  conftest.py), and the test asserts what the docs promise around it: one charge at the
  server, the same key and a replay on a re-run, the defaults shown, resume finishing pending
  operations with their journaled keys. The run is what catches a misspelt httpx keyword
  (`operation=`, `headers=`): the clients pass those on as `**kwargs: Any`, which mypy cannot check.
  The PostgreSQL block runs on conftest's `pg_dsn` (skipped where PostgreSQL cannot start, failed
  under CI). The Quickstart runs twice as written, its fixed port moved to a free one (other test
  runs may share the machine).

`SNIPPETS` maps each block, by a marker text found in that block and no other, to its preamble
and its runner. A block without an entry fails the test until it gets one (so a new block
is checked too), and an entry whose marker no longer matches exactly one block fails as well.

The shell side: the demo command installs as the test command does (that one is held to .ci/run
by test_ci_run.py) and runs the demo test_demo.py runs; every option the docs show for a
`samekey` subcommand, scripts/soak.py or `python -m benchmarks` is one they take.

The site: `mkdocs build --strict` passes (a broken link, a missing include or a docstring the
API reference cannot render fails it), and its benchmark page carries the tables of
benchmarks/results/latest.md and the chart, as `docs/hooks.py` generates them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import os
import re
import shlex
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import samekey
import samekey.testing
from samekey import _policy
from samekey.cli import build_parser
from samekey.testing import SQUARE, STRIPE, Api, PaymentServer
from test_guide_sdks import SdkBlock, run_sdk_block
from test_public_api import _users_mypy

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"

# The base URLs the blocks use for "your payment API"; a run sends them to the loopback server.
EXAMPLE_URLS = ("https://api.example.com", "https://api.payments.example")
# The languages a fenced block may have: python is
# checked here; the others are shell, output, diagrams.
FENCES = {"python", "bash", "text", "mermaid"}


SDK_GUIDE = DOCS / "guides" / "sdks.md"


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def doc_text() -> str:
    """Every doc file's text, one after the other (for the checks on commands)."""
    return "\n".join(path.read_text() for path in doc_files())


@dataclass(frozen=True)
class Block:
    file: str  # the doc file, relative to the checkout: README.md, docs/guides/async.md
    line: int  # line of the block's first line of code in that file
    code: str


def doc_blocks(path: Path | None = None, text: str | None = None) -> list[Block]:
    """The ```python blocks of one doc file, or (with no path) of every one."""
    if path is None:
        # the SDK guide's blocks need their SDKs' servers: tests/test_guide_sdks.py runs them
        return [block for doc in doc_files() if doc != SDK_GUIDE for block in doc_blocks(doc)]
    text = path.read_text() if text is None else text
    name = path.relative_to(ROOT).as_posix()
    return [
        Block(name, text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    ]


@dataclass
class Context:
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest

    def server(self, **options: Any) -> PaymentServer:
        return PaymentServer(self.tmp_path / "server.sqlite3", **options)


@dataclass(frozen=True)
class Snippet:
    marker: str  # text found in this block and in no other
    run: Callable[[Block, Context], None]
    preamble: str = ""


def on_server(code: str, url: str) -> str:
    """The block's example base URL(s) replaced by the loopback server's."""
    rewritten = code
    for example in EXAMPLE_URLS:
        rewritten = rewritten.replace(example, url)
    assert rewritten != code, (
        f"no {' or '.join(EXAMPLE_URLS)} to point at the test server in:\n{code}"
    )
    return rewritten


def execute(block: Block, preamble: str = "", *, url: str | None = None, mode: str = "exec") -> Any:
    """Run the preamble, then the block, on its own line numbers (a traceback names FILE:LINE).

    With ``url``, example base URLs in both go to that server. Returns the namespace the block
    ran in, or with ``mode="eval"`` the value of a block that is one expression.
    """
    rewrite = (
        (lambda code: on_server(code, url) if any(e in code for e in EXAMPLE_URLS) else code)
        if url
        else str
    )
    namespace: dict[str, Any] = {"__name__": "doc_block"}
    exec(compile(rewrite(preamble), f"{block.file} (test preamble)", "exec"), namespace)
    code = compile("\n" * (block.line - 1) + rewrite(block.code), block.file, mode)
    if mode == "eval":
        return eval(code, namespace)
    exec(code, namespace)
    return namespace


@contextlib.contextmanager
def printed() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def completed_record(journal_path: str | Path, operation: str) -> samekey.OperationRecord:
    with samekey.Journal(journal_path, read_only=True) as journal:
        record = journal.get(operation)
    assert record is not None and record.state == "completed", record
    return record


# -- one runner per block -------------------------------------------------------------------


def run_quickstart(block: Block, ctx: Context) -> None:
    # as a newcomer does: the same file run twice in one folder. The fixed port moves to a free one
    # (a parallel test run may hold 8765); the server keeps its books in one file across both runs
    port = free_port()
    assert "port=8765" in block.code
    block = Block(block.file, block.line, block.code.replace("port=8765", f"port={port}"))
    books = ctx.tmp_path / "server-books.sqlite3"
    ctx.monkeypatch.setattr(
        samekey.testing, "PaymentServer", functools.partial(PaymentServer, books)
    )
    outputs = []
    for _run in range(2):
        with printed() as out:
            namespace = execute(block)
        outputs.append(out.getvalue().strip())
        assert namespace["response"].status_code == 201
    record = completed_record(
        "quickstart.sqlite3", "order-1042/charge"
    )  # the explicit journal, in the folder
    assert outputs == [
        f"201 OperationInfo(operation='order-1042/charge', key='{record.key}', "
        f"attempts=1, replayed={replayed})"
        for replayed in (False, True)
    ]
    # one charge, under the journaled key; the second run sent nothing
    with contextlib.closing(sqlite3.connect(books)) as db:
        assert db.execute("SELECT key FROM requests").fetchall() == [(record.key,)]
        assert db.execute("SELECT key FROM charges").fetchall() == [(record.key,)]


def run_real_api(block: Block, ctx: Context) -> None:
    # the server takes exactly the Authorization the
    # block sends: the client's default headers reach it
    with ctx.server(require_auth="Bearer sk_...") as server:
        outputs = []
        for _run in range(2):
            with printed() as out:
                namespace = execute(block, url=server.url)
            outputs.append(out.getvalue().strip())
            assert namespace["response"].status_code == 201
        key = server.keys_seen()[0]
        # one charge; the re-run is answered from the journal with the same key, nothing sent
        assert server.charge_count() == 1 and len(server.requests()) == 1
        assert outputs == [
            f"OperationInfo(operation='order-1042/charge', key='{key}', attempts=1, "
            f"replayed={replayed})"
            for replayed in (False, True)
        ]
    assert completed_record(ctx.tmp_path / "payments.sqlite3", "order-1042/charge").key == key


def run_default_journal(block: Block, ctx: Context) -> None:
    with ctx.server() as server:
        outputs = []
        for _run in range(2):
            with printed() as out:
                execute(block, url=server.url)
            outputs.append(out.getvalue().strip())
        assert server.charge_count() == 1 and len(server.requests()) == 1  # the re-run: replayed
        default = os.environ["SAMEKEY_JOURNAL"]  # conftest puts the default journal in tmp_path
        assert outputs == [f"201 {default}"] * 2
        assert completed_record(default, "order-7/charge").key == server.keys_seen()[0]


def run_async(block: Block, ctx: Context) -> None:
    with ctx.server() as server:
        for _run in range(2):
            with printed() as out:
                execute(block, url=server.url)
            assert out.getvalue().strip() == "[201, 201, 201]"
        # three orders, three charges, each under its journaled key; the re-run sent nothing
        assert (
            sorted(c["order"] for c in server.charges()) == [1, 2, 3]
            and len(server.requests()) == 3
        )
        keys = {completed_record("orders.sqlite3", f"order-{n}/charge").key for n in (1, 2, 3)}
        assert keys == set(server.keys_seen())


def run_card_data(block: Block, ctx: Context) -> None:
    # the server gets the card; the journal never holds its number nor its CVC, even encrypted
    ctx.monkeypatch.setenv("SAMEKEY_BODY_KEY", "a-test-key-of-at-least-32-characters-long")
    with ctx.server() as server:
        for _run in range(2):
            execute(block, url=server.url)
        assert server.charge_count() == 1 and server.charges()[0]["card"]["cvc"] == "737"
    stored = b"".join(p.read_bytes() for p in ctx.tmp_path.glob("payments.sqlite3*"))
    assert (
        stored
        and b"4242424242424242" not in stored
        and b'"737"' not in stored
        and b"exp_month" not in stored
    )


def run_own_httpx_client(block: Block, ctx: Context) -> None:
    preamble = SNIPPETS["own httpx client"].preamble
    with ctx.server() as server:
        for _run in range(2):
            namespace = execute(block, preamble, url=server.url)
            namespace["client"].close()
        assert server.charge_count() == 1 and len(server.requests()) == 1  # the re-run: replayed
        with samekey.Journal(
            ctx.tmp_path / "payments.sqlite3", read_only=True
        ) as journal:  # the relative path
            record = journal.get("order-1042/charge")
            assert record is not None and record.state == "completed"
            assert server.keys_seen() == [record.key]


def run_retry_policy(block: Block, ctx: Context) -> None:
    # the block shows the defaults (the table below
    # it says so): it must build what RetryPolicy() builds
    shown = execute(block, SNIPPETS["retry policy"].preamble, mode="eval")
    default = samekey.RetryPolicy()
    assert isinstance(shown, samekey.RetryPolicy)
    for name in (
        "max_attempts",
        "initial_delay",
        "max_delay",
        "multiplier",
        "deadline",
        "max_retry_after",
    ):
        assert getattr(shown, name) == getattr(default, name), name
    for name in ("retry_statuses", "retry_exceptions", "verdict_header"):
        assert getattr(shown, name) == getattr(default, name), name
    budgets = [
        (b.capacity, b.retry_cost, b.timeout_cost, b.success_refund)
        for b in (shown.budget, default.budget)
        if b
    ]
    assert len(budgets) == 2 and budgets[0] == budgets[1]


def run_journal(block: Block, ctx: Context) -> None:
    preamble = SNIPPETS["journal"].preamble
    for durability in ("fsync", "process"):  # the block, and the mode its comment offers
        code = block.code.replace('"fsync"', f'"{durability}"', 1)
        journal = execute(Block(block.file, block.line, code), preamble, mode="eval")
        assert isinstance(journal, samekey.Journal)
        journal.close()
    assert (
        stat.S_IMODE((ctx.tmp_path / "journal.sqlite3").stat().st_mode) == 0o600
    )  # "created 0600"


def run_resume(block: Block, ctx: Context) -> None:
    # three operations left pending in ./pay.sqlite3: two refused with a 401 (sent without the
    # Authorization the journal never stores), one whose server is gone
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with ctx.server(require_auth="Bearer sk_test") as server, samekey.set_testing(True, attempts=2):
        with samekey.Client(journal="pay.sqlite3", base_url=server.url) as client:
            for invoice in ("0042", "0043"):
                answer = client.post(
                    "/charges", json={"invoice": invoice}, operation=f"invoice-{invoice}/charge"
                )
                assert answer.status_code == 401
        with samekey.Client(journal="pay.sqlite3", base_url=gone) as client:
            with pytest.raises(samekey.RetriesExhausted):
                client.post("/charges", json={"invoice": "0044"}, operation="invoice-0044/charge")
        with samekey.Journal("pay.sqlite3", read_only=True) as journal:
            assert [r.operation for r in journal.pending()] == [
                f"invoice-{n}/charge" for n in ("0042", "0043", "0044")
            ]
            keys = {r.operation: r.key for r in journal.pending()}

        with printed() as out:
            namespace = execute(block, SNIPPETS["resume"].preamble)
        assert namespace["response"].status_code == 201
        lines = out.getvalue().splitlines()
        assert lines[0] == "invoice-0043/charge 201", lines
        assert lines[1].startswith(
            "invoice-0044/charge still pending: operation 'invoice-0044/charge': gave up"
        )
        assert len(lines) == 2, lines
        # each charged once, under the key journaled before the 401
        charged = {c["invoice"]: c for c in server.charges()}
        assert sorted(charged) == ["0042", "0043"]
        assert [r["key"] for r in server.requests() if r["outcome"] == "charged"] == [
            keys["invoice-0042/charge"],
            keys["invoice-0043/charge"],
        ]
    with samekey.Journal("pay.sqlite3", read_only=True) as journal:
        assert [r.operation for r in journal.pending()] == ["invoice-0044/charge"]


def run_postgres_replicas(block: Block, ctx: Context) -> None:
    dsn = ctx.request.getfixturevalue(
        "pg_dsn"
    )  # skips (fails under CI) where no PostgreSQL can start
    ctx.monkeypatch.setenv("SAMEKEY_JOURNAL_DSN", dsn)
    with ctx.server() as server:
        namespace = execute(block, url=server.url)
        payments, journal = namespace["payments"], namespace["journal"]
        try:
            first, again = namespace["charge"]("42", 4999), namespace["charge"]("42", 4999)
            assert first.status_code == again.status_code == 201 and first.json() == again.json()
            info = samekey.operation_info(again)
            assert info is not None and info.replayed
            record = journal.get("order-42/charge")
            assert record.state == "completed" and server.keys_seen() == [record.key]
            assert server.charge_count() == 1
        finally:
            payments.close()
            journal.close()


def run_set_testing(block: Block, ctx: Context) -> None:
    with samekey.set_testing(False):  # whatever the suite had on, put back at the end
        execute(block)
        # the first line stays on (as in a conftest.py); the scoped one ended with its block
        assert _policy.testing_attempts_cap() == (True, None)
        samekey.set_testing(False)


def run_on_retry(block: Block, ctx: Context) -> None:
    # a complete program with its own server: what it prints is what the page says it prints
    with printed() as out:
        execute(block)
    assert out.getvalue().splitlines() == [
        "order-1042/charge attempt 2: throttled, waiting 1 s",
        "201 {'503': 1, '429': 1}",
    ]


def run_on_end(block: Block, ctx: Context) -> None:
    with printed() as out:
        execute(block)
    assert out.getvalue().splitlines() == [
        "order-2/charge: HTTP 402 after 1 attempt(s)",
        "{'completed': 1, 'replayed': 1, 'refused': 1}",
    ]


def run_prometheus(block: Block, ctx: Context) -> None:
    with printed() as out:
        execute(block)
    assert out.getvalue().splitlines() == [
        'samekey_calls_total{outcome="completed"} 1.0',
        'samekey_retries_total{cause="503"} 1.0',
    ]


def run_structlog(block: Block, ctx: Context) -> None:
    import structlog

    try:
        with printed() as out:
            execute(block)
    finally:
        # the block configures structlog for its process, as an application does
        structlog.reset_defaults()
    [line] = out.getvalue().splitlines()
    logged = json.loads(line)
    assert logged["event"] == "samekey call ended" and logged.pop("event")
    assert sorted(logged) == sorted(f.name for f in dataclasses.fields(samekey.EndDetails))
    assert (logged["operation"], logged["outcome"], logged["status_code"], logged["attempts"]) == (
        "order-1042/charge", "completed", 201, 1,
    )  # fmt: skip


# after the block, in its process: the names of the metrics its MeterProvider received
OTEL_METRICS = """
data = reader.get_metrics_data()
print(sorted(m.name for r in (data.resource_metrics if data else ()) for s in r.scope_metrics for \
m in s.metrics))
"""


def run_opentelemetry(block: Block, ctx: Context) -> None:
    # a process of its own: OpenTelemetry takes one global provider per process, as the block sets
    script = ctx.tmp_path / "otel_block.py"
    script.write_text(module_text(block, "") + OTEL_METRICS)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ctx.tmp_path
    )
    assert run.returncode == 0, run.stderr
    *spans, names = run.stdout.splitlines()
    assert spans == [
        "samekey attempt 1 503 retried",
        "samekey attempt 2 201 final",
        "samekey POST order-1042/charge completed 2",
    ]
    assert ast.literal_eval(names) == [
        "samekey.attempts", "samekey.journal.duration", "samekey.operation.duration",
        "samekey.operations",
        "samekey.retries",
    ]  # fmt: skip


MYSHOP = '''"""The user's code the testing guide's pytest example imports."""

import samekey


def charge_order(client: samekey.Client, order: int) -> None:
    response = client.post("/charges", json={"order": order, "amount": 4999}, \
operation=f"order-{order}/charge")
    response.raise_for_status()
'''


def run_pytest_example(block: Block, ctx: Context) -> None:
    (ctx.tmp_path / "myshop.py").write_text(MYSHOP)
    ctx.monkeypatch.syspath_prepend(str(ctx.tmp_path))
    ctx.monkeypatch.delitem(sys.modules, "myshop", raising=False)
    namespace = execute(block, SNIPPETS["pytest example"].preamble)
    tests = {
        name: fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)
    }
    assert sorted(tests) == [
        "test_a_lost_answer_does_not_charge_twice",
        "test_many_orders_on_a_lossy_network",
    ]
    with samekey.set_testing(True):  # what its autouse fixture does
        for name, test in tests.items():
            folder = ctx.tmp_path / name
            folder.mkdir()
            test(folder)
    sys.modules.pop("myshop", None)


def run_pytest_plugin_example(block: Block, ctx: Context) -> None:
    """The plugin guide's test file, run by pytest as a user's: its three tests pass."""
    (ctx.tmp_path / "test_payments.py").write_text(block.code)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_payments.py"],
        cwd=ctx.tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout + result.stderr


def sdk_runner(api: Api, operation: str) -> Callable[[Block, Context], None]:
    """A README block of "With Stripe, Square and
    other SDKs", run as the guide's (test_guide_sdks.py)."""

    def run(block: Block, ctx: Context) -> None:
        spec = SdkBlock("", api, operation)
        run_sdk_block(block.code, "README.md", block.line, spec, ctx.tmp_path, ctx.monkeypatch)

    return run


# marker: text of that block and of no other, a comment or a name where one will do (a broken
# keyword should fail the type check and the run, not hide behind a marker that no longer matches)
SNIPPETS: dict[str, Snippet] = {
    "quickstart": Snippet("a stand-in for your payment API", run_quickstart),
    "real api": Snippet("your stable name for this logical operation", run_real_api),
    "default journal": Snippet("no journal=: the default journal", run_default_journal),
    "card data": Snippet('redact_body=("card.number", "card.cvc")', run_card_data),
    "own httpx client": Snippet(
        "samekey.SameKeyTransport(journal=",
        run_own_httpx_client,
        preamble='import httpx\n\nimport samekey\n\nurl = "https://api.example.com/v1/charges"\n'
        'payload = {"amount": 4999, "currency": "eur", "order": 1042}\n',
    ),
    "retry policy": Snippet(
        "attempts in all, the first included",
        run_retry_policy,
        preamble="import httpx\n\nimport samekey\n",
    ),
    "journal": Snippet(
        "samekey.Journal(path,",
        run_journal,
        preamble='import samekey\n\npath = "journal.sqlite3"\n',
    ),
    "resume": Snippet(
        '"invoice-0042/charge"', run_resume, preamble='import samekey\n\ntoken = "sk_test"\n'
    ),
    "postgres replicas": Snippet("SAMEKEY_JOURNAL_DSN", run_postgres_replicas),
    "on_retry": Snippet("def warn_when_throttled(", run_on_retry),
    "on_end": Snippet("def record_end(", run_on_end),
    "prometheus": Snippet("def measure_end(", run_prometheus),
    "structlog": Snippet("def log_end(", run_structlog),
    "opentelemetry": Snippet("trace.set_tracer_provider(", run_opentelemetry),
    "async": Snippet("async def charge_all(", run_async),
    "set_testing": Snippet("e.g. in conftest.py", run_set_testing),
    "pytest plugin": Snippet(
        "# test_payments.py\n", run_pytest_plugin_example, preamble="# mypy: allow-untyped-defs\n"
    ),
    "pytest example": Snippet(
        "# test_checkout.py\n", run_pytest_example, preamble="# mypy: allow-untyped-defs\n"
    ),
    "stripe sdk": Snippet(
        "one durable key for the one request", sdk_runner(STRIPE, "order-1042/pi")
    ),
    "square sdk": Snippet("square.payments.create(", sdk_runner(SQUARE, "order-1042/pay")),
}


def snippet_block(name: str, blocks: list[Block] | None = None) -> Block:
    """The one doc block SNIPPETS[name] is about."""
    marker = SNIPPETS[name].marker
    matches = [b for b in (doc_blocks() if blocks is None else blocks) if marker in b.code]
    assert len(matches) == 1, (
        f"SNIPPETS[{name!r}]: its marker {marker!r} is in {len(matches)} doc blocks "
        f"({[f'{b.file}:{b.line}' for b in matches]}), not in exactly one: update the marker"
    )
    return matches[0]


def preamble_of(block: Block) -> str:
    """The preamble of the snippet entry whose marker
    is in ``block`` ("" for none: a complete program)."""
    preambles = [s.preamble for s in SNIPPETS.values() if s.marker in block.code]
    return preambles[0] if len(preambles) == 1 else ""


def test_every_doc_block_has_one_snippet_entry() -> None:
    blocks = doc_blocks()
    assert len(blocks) >= 13 and {b.file for b in blocks} >= {"README.md", "docs/guides/async.md"}
    checked = [snippet_block(name, blocks) for name in SNIPPETS]
    unchecked = [f"{b.file}:{b.line}" for b in blocks if b not in checked]
    assert not unchecked, f"python blocks no SNIPPETS entry checks (add one): {unchecked}"


def test_every_fenced_block_is_python_or_a_language_that_is_not_code() -> None:
    # a ```py or ```python3 block would be shown as python and escape every check here
    for path in doc_files():
        fences = re.findall(r"^```(\S*)", path.read_text(), re.MULTILINE)
        assert len(fences) % 2 == 0, f"{path}: an unclosed ``` fence"
        opening = fences[::2]
        assert set(opening) <= FENCES, (
            f"{path}: fences {sorted(set(opening) - FENCES)}: use one of {sorted(FENCES)}"
        )


def test_every_doc_block_compiles_as_written() -> None:
    failures = []
    for block in doc_blocks():
        try:
            compile("\n" * (block.line - 1) + block.code, block.file, "exec")
        except SyntaxError as exc:
            failures.append(f"{block.file}:{exc.lineno}: {exc.msg}: {(exc.text or '').strip()}")
    assert not failures, "\n".join(failures)


def module_text(block: Block, preamble: str) -> str:
    """The preamble, then the block on its own line
    numbers (the preamble fits in the lines above)."""
    head = preamble.splitlines()
    assert len(head) < block.line, "the preamble must fit above the block"
    return "\n".join(head) + "\n" * (block.line - len(head)) + block.code


def test_every_doc_block_passes_the_users_mypy_strict(tmp_path: Path) -> None:
    folder = tmp_path / "doc_blocks"
    folder.mkdir()
    (folder / "myshop.py").write_text(MYSHOP)
    blocks = doc_blocks()
    for number, block in enumerate(blocks):
        (folder / f"block_{number}.py").write_text(module_text(block, preamble_of(block)))
    result = _users_mypy(folder)  # one run over every block: mypy starts once
    # block_3.py:52: error: ... -> docs/guides/async.md:52:
    # error: ... (the modules keep their lines)
    report = re.sub(
        r"\S*block_(\d+)\.py:",
        lambda m: f"{blocks[int(m[1])].file}:",
        result.stdout + result.stderr,
    )
    assert result.returncode == 0, report
    assert f"Success: no issues found in {len(blocks) + 1} source files" in result.stdout


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_the_doc_block_runs_as_promised(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    block = snippet_block(name)
    monkeypatch.chdir(tmp_path)
    SNIPPETS[name].run(block, Context(tmp_path, monkeypatch, request))


def test_the_readme_is_short() -> None:
    # what a newcomer reads in five minutes; the rest belongs in docs/
    assert len(README.read_text().splitlines()) <= 200


# -- the commands --------------------------------------------------------------------------


def test_the_demo_command_is_the_ci_install_then_the_demo_the_tests_run() -> None:
    # the test command itself is held to .ci/run by test_ci_run.py; the demo installs the same way
    readme = README.read_text()
    demo = readme.split("# run the demo: ", 1)[1].splitlines()[1]
    tests = readme.split("# run the tests (what CI runs)\n", 1)[1].splitlines()[0]
    assert (
        demo == "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python "
        "examples/checkout.py"
    )
    assert demo == re.sub(r'-e "\.\[[\w,]+\]"', "-e .", tests).replace(
        "-m pytest -q", "examples/checkout.py"
    )
    assert (ROOT / "examples" / "checkout.py").is_file()
    assert (
        '"examples" / "checkout.py"' in (ROOT / "tests" / "test_demo.py").read_text()
    )  # which runs it


def test_the_samekey_commands_in_the_docs_take_the_options_they_show() -> None:
    parser = build_parser()
    subcommands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    text = doc_text()
    shown = [
        (command, ["--journal PATH", "--debug"]) for command in subcommands
    ]  # "Every subcommand takes"
    # a row of the command table: the options in its `...` spans
    for row in re.findall(r"^\| `samekey .*$", text, re.MULTILINE):
        shown.append((row.split()[2], re.findall(r"`([^`]*)`", row)))
    # `samekey COMMAND ...` anywhere, and a shell line starting with it
    shown += [(command, [span]) for command, span in re.findall(r"`samekey (\w+)\b([^`]*)`", text)]
    shell = "\n".join(re.findall(r"^```bash\n(.*?)^```$", text, re.DOTALL | re.MULTILINE))
    shown += [
        (command, [line])
        for command, line in re.findall(r"^samekey (\w+)\b(.*)$", shell, re.MULTILINE)
    ]
    # the option table of `samekey resume`: its first column
    resume_table = (
        (DOCS / "reference" / "cli.md")
        .read_text()
        .split("## `samekey resume`", 1)[1]
        .split("\n\n")[1]
    )
    shown += [("resume", [row.split("|")[1]]) for row in resume_table.splitlines()[2:]]
    assert {command for command, _ in shown} == set(subcommands) and len(shown) > 20
    for command, spans in shown:
        options = {
            o
            for span in spans
            for o in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", span.split("#")[0])
        }
        unknown = options - set(subcommands[command]._option_string_actions)
        assert not unknown, (
            f"docs: samekey {command} {sorted(unknown)}: not options of that command"
        )


def test_the_scripts_in_the_docs_take_the_options_they_show() -> None:
    text = doc_text()
    commands = {
        "python scripts/soak.py": [sys.executable, str(ROOT / "scripts" / "soak.py")],
        "python -m benchmarks": [sys.executable, "-m", "benchmarks"],
        "python examples/batch_invoices.py": [
            sys.executable,
            str(ROOT / "examples" / "batch_invoices.py"),
        ],
    }
    for shown, argv in commands.items():
        lines = [
            line
            for line in re.findall(r"^(?:pip|python) .*$", text, re.MULTILINE)
            if line.startswith(shown)
        ]
        assert lines, shown
        usage = subprocess.run(
            [*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert usage.returncode == 0, usage.stderr
        for line in lines:
            for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line):
                assert option in usage.stdout, (
                    f"{line}: {option} is not an option of {shlex.join(argv)}"
                )


# -- the site ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built as CI builds it: ``mkdocs build --strict`` (a warning is an error)."""
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("mkdocstrings") is None
    ):
        pytest.fail(
            "the docs' packages are missing: pip install -e '.[test,docs]' (the "
            "README's test command)"
        )
    folder = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return folder


def test_mkdocs_build_strict_builds_every_page(site: Path) -> None:
    for page in sorted(DOCS.rglob("*.md")):
        html = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            html = site / page.relative_to(DOCS).parent / "index.html"
        assert html.is_file(), f"{page} was not built"
    # the Quickstart comes from the README, the changelog from CHANGELOG.md: one copy of each
    assert (
        "a stand-in for your payment API" in (site / "getting-started" / "index.html").read_text()
    )
    assert "Keep a Changelog" in (site / "changelog" / "index.html").read_text()
    assert "resume_pending" in (site / "reference" / "api" / "index.html").read_text()


def test_the_benchmark_page_is_generated_from_benchmarks_results(site: Path) -> None:
    latest = (RESULTS / "latest.md").read_text()
    page = (site / "performance" / "index.html").read_text()
    rows = [line for line in latest.splitlines() if line.startswith("| samekey.Client (process)")]
    assert rows and all(cell.strip() in page for cell in rows[0].split("|") if cell.strip())
    assert latest.splitlines()[0].removeprefix("Measured ")[:16] in page  # its date
    assert (
        "<!-- benchmarks:tables -->" not in page
        and "NOT MET" not in page
        and "(target <" not in page
    )
    assert (site / "assets" / "latency.png").read_bytes() == (RESULTS / "latency.png").read_bytes()
