"""AI.* commands carried out on the client's own Redis connection.

A command's plan (``translate.reply_plan``) yields batches of Redis commands; ``Runner`` sends each
batch on the session's connection to Redis, behind the client's own earlier commands, and resumes
the plan with the replies, decoded by hiredis (errors as redis-py's exceptions, as the plans
expect). So an AI.* command costs no second connection, no pool checkout and no redis-py machinery,
and it runs in the DB and with the rights the connection has (SELECT, AUTH: Redis' ACLs apply as
to the user's own commands). Plans are driven by the replies' callbacks, not by a task each: most
commands take one round trip, and a task would cost more than the rest of the command.

A job (MODELEXECUTE, SCRIPTEXECUTE, DAGs) is the Python client's wait plan (``client.wait_plan``)
driven on the same connection: the entry's XADD (or the enqueue script of a bounded queue) and a
first look at its private reply list in one round trip, then looks (``client.reply_lists``),
heartbeat reads and pauses until the reply that names the job's own stream and entry id comes, or
the wait ends by the client's rules; then the list is removed. The connection is the client's,
held by its AI.* command anyway.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser

from aiworker.client import first_round, reply_lists, waiting
from aiworker.client.ops import Print, State, Submit, VerifyHere
from aiworker.client.wait_plan import (
    LONGEST_WAIT_S,
    Enqueue,
    Liveness,
    Pause,
    Receive,
    bounded,
    job_plan,
)
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.replies import MSGPACK
from aiworker.storage import health
from aiworker.storage.plans import Commands, Plan
from aiworker.storage.queues import Enqueuer
from aiworker.storage.wire import aborted_by, executed

from .upstream import LargeSlot, Slot, Upstream

# A plan's end: its result, or the exception it raised.
Done = Callable[[Any], None]

_START: Any = object()
# One reader decodes every reply: replies are complete when they reach it, and the loop is one
# thread.
_reader = hiredis.Reader(replyError=BaseParser.parse_error)


def decode(data: bytes) -> Any:
    """A reply as redis-py gives it (bytes, ints, lists; an error reply as its exception)."""
    _reader.feed(data)
    return _reader.gets()


def local_result(step: Any) -> Any:
    """What a plan gets for a step the gateway answers itself: nothing to print, and models and
    scripts are never checked here (``VerifyHere``: a live worker checks them)."""
    if isinstance(step, VerifyHere):
        return False
    if isinstance(step, Print):
        return None
    raise TypeError(f"unknown plan step {type(step).__name__}")


def _ignored(replies: list[Any]) -> None:
    """A removal's reply: a lost one leaves the list to expire."""


class Runner:
    """Runs AI.* plans on one connection (``upstream``: the session's, opened on first use), as
    one identity: ``state`` holds its device queues, ``enqueuer`` its queues' length limits."""

    def __init__(
        self,
        upstream: Callable[[], Upstream],
        state: State,
        enqueuer: Enqueuer,
        reply_timeout: float,
    ) -> None:
        self.upstream = upstream
        self.state = state
        self.enqueuer = enqueuer
        self.reply_timeout = reply_timeout

    def send(
        self,
        commands: Sequence[Sequence[Any]],
        then: Callable[[list[Any]], None],
        large: bool = False,
    ) -> None:
        """Queue ``commands`` on the connection (sent at its next flush); ``then`` gets their
        replies (``large``: their large strings received in place, as memoryviews)."""
        replies: list[Any] = []
        count = len(commands)

        def got(reply: Any) -> None:
            replies.append(reply)
            if len(replies) == count:
                then(replies)

        upstream = self.upstream()
        kind = LargeSlot if large else Slot
        for command in commands:
            upstream.send(command, kind(internal=got))

    def start(self, plan: Plan[Any], done: Done, step: Any = None, sent: Any = _START) -> Drive:
        """Drive ``plan`` to its end (``done`` gets it, never before this returns): from its
        start, from a ``step`` it yielded, or by sending it ``sent`` (the result of the step it
        yielded last)."""
        drive = Drive(self, plan, done)
        drive.starting = True
        if step is not None:
            drive.carry_out(step)
        else:
            drive.resume(sent)
        drive.starting = False
        self.upstream().flush()
        return drive

    async def run(self, plan: Plan[Any], step: Any = None, sent: Any = _START) -> Any:
        """``start`` awaited: the plan's result (or the exception it raised, raised)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.start(plan, future.set_result, step, sent)
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    def job(self, step: Submit) -> tuple[Plan[Any], str]:
        """The wait plan of a job, and the private list its reply comes to."""
        request, keyspace = step.request, self.state.keyspace
        limit = step.limit
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        reply_key = keyspace.reply(os.urandom(16).hex())
        fields = encode_entry(request, reply_key, MSGPACK)
        stream = keyspace.queue(step.queue)
        plan = job_plan(
            keyspace, step.queue, stream, fields, request.timeout_ms, limit, guard=step.guard
        )
        return plan, reply_key


class Drive:
    """One plan driven to its end: each step's result resumes it (see the module docstring).
    A job's wait plan runs as a child drive, knowing its private reply list (removed when the
    wait is over)."""

    __slots__ = ("child", "done", "plan", "reply_list", "runner", "starting", "stopped")

    def __init__(self, runner: Runner, plan: Plan[Any], done: Done, reply_key: str = "") -> None:
        self.runner = runner
        self.plan = plan
        self.done = done
        self.reply_list = reply_lists.PrivateList(reply_key) if reply_key else None
        self.child: Drive | None = None
        self.starting = False
        self.stopped = False

    def cancel(self, error: Exception | None = None) -> None:
        """Stop: the client or the connection went away (``done`` gets ``error`` if given);
        what comes back later is dropped."""
        if self.stopped:
            return
        self.stopped = True
        if self.child is not None:
            self.child.cancel()
        self.plan.close()
        if error is not None:
            self.done(error)

    def resume(self, result: Any) -> None:
        """Send the last step's result (an exception: thrown) and carry out the next step."""
        if self.stopped:
            return
        plan = self.plan
        try:
            if result is _START:
                step = next(plan)
            elif isinstance(result, Exception):
                step = plan.throw(result)
            else:
                step = plan.send(result)
            while isinstance(step, (Print, VerifyHere)):
                step = plan.send(local_result(step))
        except StopIteration as stop:
            self._end(stop.value)
            return
        except Exception as exc:
            self._end(exc)
            return
        try:
            self.carry_out(step)
        except Exception as exc:  # a step it cannot take: its error goes back into the plan
            self.resume(exc)

    def carry_out(self, step: Any) -> None:
        runner = self.runner
        if isinstance(step, Commands):
            if step.transaction:
                runner.send([("MULTI",), *step.commands, ("EXEC",)], self._committed)
            else:
                runner.send(step.commands, self.resume, step.large)
        elif isinstance(step, Submit):
            plan, reply_key = runner.job(step)
            self._run_child(plan, reply_key)
        elif isinstance(step, Enqueue):
            self._enqueue(step)
        elif isinstance(step, Receive):
            wait = bounded(step.seconds, LONGEST_WAIT_S)
            runner.send(self._reply_list().look(wait), self._received)
        elif isinstance(step, Liveness):
            plan = health.liveness_plan(runner.state.keyspace, health.LIVE_FOR_S)
            self._run_child(plan)
        elif isinstance(step, Pause):
            asyncio.get_running_loop().call_later(step.seconds, self._paused)
        else:
            raise TypeError(f"unknown plan step {type(step).__name__}")

    def _reply_list(self) -> reply_lists.PrivateList:
        if self.reply_list is None:
            raise TypeError("a plan without a reply list waited for a reply")
        return self.reply_list

    def _run_child(self, plan: Plan[Any], reply_key: str = "") -> None:
        self.child = Drive(self.runner, plan, self._child_done, reply_key)
        self.child.resume(_START)

    def _child_done(self, result: Any) -> None:
        self.child = None
        self.resume(result)

    def _enqueue(self, step: Enqueue) -> None:
        """The entry and a first wait for its reply, in one round trip (``first_round``); with
        a guard (the client's rights to the job's keys) in one MULTI with the entry's XADD."""
        enqueuer, reply_list = self.runner.enqueuer, self._reply_list()
        commands, added = first_round.commands(enqueuer, step, reply_list, LONGEST_WAIT_S)

        def sent(replies: list[Any]) -> None:
            try:
                result: Any = first_round.enqueued(enqueuer, step, reply_list, replies, added)
            except Exception as exc:
                result = exc
            self.resume(result)

        self.runner.send(commands, sent)

    def _received(self, replies: list[Any]) -> None:
        try:
            item = self._reply_list().looked(replies)
        except Exception as exc:
            item = exc
        self.resume(item)

    def _paused(self) -> None:
        self.resume(None)
        self.runner.upstream().flush()

    def _committed(self, replies: list[Any]) -> None:
        # an EXECABORT stands for the refusal that caused it (Redis' NOPERM as a command was
        # queued): "Transaction discarded" says nothing of what went wrong
        self.resume(executed(aborted_by(replies[-1], replies[1:-1])))

    def _end(self, result: Any) -> None:
        self.stopped = True
        if self.reply_list is not None:  # a job's wait is over: its list goes (``reply_lists``)
            self.runner.send([self.reply_list.done()], _ignored)
            self.runner.upstream().flush()
        if self.starting:  # a plan without I/O: its caller has not seen the drive yet
            asyncio.get_running_loop().call_soon(self.done, result)
        else:
            self.done(result)
