"""The I/O a flow asks its driver for. A driver (sync or async) performs each action and
sends the result back in, like httpx's auth flows:

    a JournalCall      run it on the journal, send back its result (or throw its error)
    Send(request)      send the request once, send back the answer: read whole when
                       it is journaled (buffer=True), else still streaming, as httpx has it
    Read(response)     read a streaming answer whole (the last one, kept for the caller)
    Discard(response)  close a streaming answer that is not handed on (a retry follows)
    Sleep(seconds)     wait, then continue
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import httpx

from ._contract import JournalCall

__all__ = ["Action", "Discard", "Flow", "Read", "Send", "Sleep", "abandon"]

# slotted, not frozen: see the calls in _contract


@dataclass(slots=True)
class Send:
    request: httpx.Request
    buffer: bool = True


@dataclass(slots=True)
class Read:
    response: httpx.Response


@dataclass(slots=True)
class Discard:
    response: httpx.Response


@dataclass(slots=True)
class Sleep:
    seconds: float


Action = JournalCall | Send | Read | Discard | Sleep
Flow = Generator[Action, Any, httpx.Response]
Step = Generator[Action, Any, Any]  # a part of a flow, run with ``yield from``


def abandon(flow: Flow, interruption: BaseException, run: Callable[[JournalCall], Any]) -> None:
    """An interruption (a cancelled task, Ctrl-C) reached a driver: let the flow free its lease.

    The flow's journal calls go to ``run``, whose result the flow does not need: the sync
    driver runs them at once; the async driver queues them behind the calls already queued
    for its journal thread (so the release lands after a claim the interruption cut short).
    The driver then re-raises.
    """
    try:
        action = flow.throw(interruption)
        while isinstance(action, JournalCall):
            action = flow.send(run(action))
    except BaseException:  # the flow re-raised it (its normal end) or the journal failed too
        pass
    finally:
        flow.close()
