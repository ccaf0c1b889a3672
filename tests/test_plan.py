"""Keys (_plan.py): drawn from the OS in bulk, yet every one a fresh UUID v4, in a forked child too."""

from __future__ import annotations

import os
import uuid

import pytest

from samekey import _plan


def test_every_key_is_a_distinct_uuid4_across_pool_refills() -> None:
    keys = [_plan.uuid4() for _ in range(3 * _plan.KEY_POOL + 1)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        parsed = uuid.UUID(key)
        assert str(parsed) == key and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_hands_out_its_parents_pooled_keys() -> None:
    _plan.uuid4()  # the pool is full: the child must not reuse what the parent will send
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(writer, ",".join(_plan.uuid4() for _ in range(_plan.KEY_POOL)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {_plan.uuid4() for _ in range(_plan.KEY_POOL)}
    assert len(child) == _plan.KEY_POOL and not child & parent
