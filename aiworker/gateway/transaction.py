"""AI.* commands inside a client's MULTI, as RedisAI 1.2.7 ran them.

RedisAI refused to run a job inside MULTI (MODELEXECUTE, SCRIPTEXECUTE, the DAGs and their
deprecated forms): the command was QUEUED and its place in EXEC's reply held "Cannot run RedisAI
command within a transaction or a LUA script". Every other AI.* command ran in the transaction like
any Redis command. The gateway does the same: such a command's first round trip of Redis calls is
queued in the client's transaction, so it runs at EXEC, atomically and in order with the client's
own commands; its plan then goes on with EXEC's replies to those calls (its scripts loaded just
before them, SCRIPT LOAD: a script Redis had not loaded could not run again in its place). What needs
another round trip (a tensor over 1 MB) is done right after EXEC, before the client's next command
runs, and its reply takes its place in EXEC's reply; so are model and script stores, whole (they
hash and compile blobs in a thread: ``aiclients``), as the DB and user that EXEC left in effect at
their place (a SELECT queued before one counts).

A SUBSCRIBE queued in the transaction subscribes when EXEC runs, and from EXEC's reply on the
connection is a pipe (``session``). An AI.* command's plan may need Redis calls after EXEC, which a
pipe would take for pub/sub traffic: a transaction holds one or the other, and the second gets
an error in its place in EXEC's reply (``SUBSCRIBING``). Stores run on connections of their own
and mix with a SUBSCRIBE either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiworker.client.ops import Submit
from aiworker.storage import lua
from aiworker.storage.plans import Commands, Plan

from . import resp
from .runner import Runner, decode, local_result
from .translate import error_reply

IN_TRANSACTION = "Cannot run RedisAI command within a transaction or a LUA script"
SUBSCRIBING = "gateway: a transaction cannot both subscribe and run RedisAI commands"


@dataclass
class _Hooked:
    """A Redis command whose reply a hook sees (``hooks``): SELECT's changes the DB AI.*
    commands use once EXEC ran it, HELLO's the protocol of the replies after it, COMMAND's gets
    RedisAI's entries."""

    hook: Callable[[bytes], bytes | None]


@dataclass
class _Known:
    """A reply known when its command was queued (an error), written in the protocol in effect
    at its place (a HELLO queued before it counts)."""

    value: Any


@dataclass
class _Local:
    """A command the gateway answers itself (``session.Host.local_reply``), rendered at its
    place."""

    render: Callable[[], bytes]


@dataclass
class _After:
    """A command run whole once EXEC ran (a model or script store)."""

    run: Callable[[], Awaitable[Any]]


@dataclass
class _Queued:
    """An AI.* command in the transaction: its plan, stopped at ``step``, whose ``count`` Redis
    commands are queued (0: the step is still to be carried out) after ``loads`` SCRIPT LOADs."""

    plan: Plan[Any]
    step: Any
    count: int
    loads: int = 0


class Transaction:
    """What a client queued since MULTI: for each command, what its place in EXEC's reply holds.
    ``speaks_resp3`` tells the client's protocol as EXEC's reply is made: Redis writes each
    reply in the protocol in effect when its command runs, and a HELLO may be queued too."""

    def __init__(self, speaks_resp3: Callable[[], bool]) -> None:
        self.speaks_resp3 = speaks_resp3
        # None: a Redis command (its reply is Redis'); the rest: see their classes
        self.items: list[_Hooked | _Known | _Local | _After | _Queued | None] = []
        self.subscribes = False  # a SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE was queued
        self.replies_on = False  # a CLIENT REPLY ON was queued (OFF and SKIP act at once)
        self.loaded: set[str] = set()  # SHAs of the scripts a SCRIPT LOAD queued loads

    def has_plans(self) -> bool:
        """Whether an AI.* command's plan is queued (it may make Redis calls after EXEC)."""
        return any(isinstance(item, _Queued) for item in self.items)

    def redis_command(self, hook: Callable[[bytes], bytes | None] | None = None) -> None:
        """A Redis command was queued; ``hook`` sees its reply in EXEC's."""
        self.items.append(None if hook is None else _Hooked(hook))

    def answer(self, reply: Any) -> None:
        self.items.append(_Known(reply))

    def answered(self, render: Callable[[], bytes]) -> None:
        """A command the gateway answers itself: ``render()`` gives its reply's bytes."""
        self.items.append(_Local(render))

    def after_exec(self, run: Callable[[], Awaitable[Any]]) -> None:
        """A command run whole once EXEC ran (``run()``: its reply)."""
        self.items.append(_After(run))

    def queue(self, plan: Plan[Any], runner: Runner) -> None:
        """Start an AI.* command's plan; its first Redis calls join the transaction."""
        self.queue_started(plan, start(plan), runner)

    def queue_started(self, plan: Plan[Any], step: Any, runner: Runner) -> None:
        """Queue a plan ``start`` carried out up to ``step``."""
        if isinstance(step, Done):
            self.answer(step.reply)
            return
        if isinstance(step, Commands):  # already inside MULTI: no MULTI/EXEC of its own
            # its scripts loaded first: a NOSCRIPT could not be answered in its place
            loads = lua.loads_for(step.commands, self.loaded)  # once a transaction
            runner.send([*loads, *step.commands], _queued)
            self.items.append(_Queued(plan, step, len(step.commands), len(loads)))
        else:
            self.items.append(_Queued(plan, step, 0))

    def calls_after_exec(self) -> bool:
        """Whether an AI.* command in it may call Redis after EXEC (a plan, a store)."""
        return any(isinstance(item, (_Queued, _After)) for item in self.items)

    def shapes_exec(self) -> bool:
        """Whether EXEC's reply needs the gateway: AI.* commands, replies it knows, hooks."""
        return any(item is not None for item in self.items)

    async def exec_reply(self, data: bytes, runner: Runner) -> bytes:
        """EXEC's reply with every AI.* command's reply in its place (``data``: Redis')."""
        answers = resp.array_items(data, 0, len(data))
        if answers is None:  # nil (WATCH), EXECABORT, ...: nothing ran
            self.discard()
            return data
        replies = iter(answers)
        out = [b"*%d\r\n" % len(self.items)]
        for item in self.items:
            if item is None:
                out.append(next(replies, resp.NIL))
            elif isinstance(item, _Hooked):
                reply = next(replies, resp.NIL)
                out.append(item.hook(reply) or reply)
            elif isinstance(item, _Local):
                out.append(item.render())
            elif isinstance(item, _Known):
                out.append(resp.encode(item.value, self.speaks_resp3()))
            else:
                try:
                    if isinstance(item, _After):
                        value = await item.run()
                    elif item.count:
                        for _ in range(item.loads):  # the SCRIPT LOADs' SHAs
                            next(replies, resp.NIL)
                        own = [self._decode(next(replies, resp.NIL)) for _ in range(item.count)]
                        value = await runner.run(item.plan, sent=own)
                    else:
                        value = await runner.run(item.plan, step=item.step)
                except Exception as exc:
                    value = error_reply(exc)
                out.append(resp.encode(value, self.speaks_resp3()))
        return b"".join(out)

    def _decode(self, reply: bytes) -> Any:
        """A reply to a plan's call queued in the transaction, as the plan reads it (RESP2)."""
        decoded = decode(reply)
        return resp.as_resp2(decoded) if self.speaks_resp3() else decoded

    def discard(self) -> None:
        for item in self.items:
            if isinstance(item, _Queued):
                item.plan.close()
        self.items = []


@dataclass
class Done:
    """A plan that ended before any Redis call: its reply (an error's, when it failed)."""

    reply: Any


def start(plan: Plan[Any]) -> Commands | Submit | Done:
    """Carry out a plan up to its first Redis calls or job (only computation: a large command's
    may run in a thread)."""
    try:
        step = next(plan)
        while not isinstance(step, (Commands, Submit)):
            step = plan.send(local_result(step))
    except StopIteration as stop:
        return Done(stop.value)
    except Exception as exc:
        return Done(error_reply(exc))
    return step


def _queued(replies: list[Any]) -> None:
    """Redis answers QUEUED to a command in a transaction (an error makes EXEC fail)."""
