"""AI.* commands carried out on the client's own Redis connection.

A command's plan (``translate.reply_plan``) yields batches of Redis commands; ``Runner`` sends each
batch on the session's connection to Redis, behind the client's own earlier commands, and resumes
the plan with the replies, decoded by hiredis (errors as redis-py's exceptions, as the plans
expect). So an AI.* command costs no second connection, no pool checkout and no redis-py machinery,
and it runs in the DB and with the rights the connection has (SELECT, AUTH: Redis' ACLs apply as
to the user's own commands). Plans are driven by the replies' callbacks, not by a task each: most
commands take one round trip, and a task would cost more than the rest of the command.

A job (MODELEXECUTE, SCRIPTEXECUTE, DAGs) goes the way the Python client sends one: its XADD and a
first BLPOP of its private reply list in one round trip. A reply that takes longer than that first
wait is waited for by the blocking client's own rules (``client.jobs``), in a thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser

from aiworker.client import waiting
from aiworker.client.jobs import LONGEST_BLPOP_S
from aiworker.client.ops import Print, State, Submit, VerifyHere
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.replies import MSGPACK, decode_reply
from aiworker.protocol.text import text
from aiworker.storage.plans import Commands, Plan

from .upstream import Slot, Upstream

# The rest of a wait for a job's reply: (queue, entry id, reply list, request, clock, stream).
Wait = Callable[..., Awaitable[Any]]
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
    """What a plan gets for a step the gateway answers itself: nothing to print, and models are
    never loaded here (``VerifyHere``: a live worker checks them)."""
    if isinstance(step, VerifyHere):
        return False
    if isinstance(step, Print):
        return None
    raise TypeError(f"unknown plan step {type(step).__name__}")


class Runner:
    """Runs AI.* plans on one connection (``upstream``: the session's, opened on first use)."""

    def __init__(
        self, upstream: Callable[[], Upstream], state: State, wait: Wait, reply_timeout: float
    ) -> None:
        self.upstream = upstream
        self.state = state
        self.wait = wait
        self.reply_timeout = reply_timeout

    def send(self, commands: Sequence[Sequence[Any]], then: Callable[[list[Any]], None]) -> None:
        """Queue ``commands`` on the connection (sent at its next flush); ``then`` gets their
        replies."""
        replies: list[Any] = []
        count = len(commands)

        def got(reply: Any) -> None:
            replies.append(reply)
            if len(replies) == count:
                then(replies)

        upstream = self.upstream()
        for command in commands:
            upstream.send(command, Slot(internal=got))

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

    def submit(self, step: Submit, then: Callable[[Any], None]) -> None:
        """Queue a job; ``then`` gets the worker's reply, or the exception that ended the wait
        (see the module docstring)."""
        request, keyspace = step.request, self.state.keyspace
        limit = step.limit
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        clock = waiting.Clock(limit)
        reply_key = keyspace.reply(os.urandom(16).hex())
        stream = keyspace.queue(step.queue)
        fields = encode_entry(request, reply_key, MSGPACK)

        def sent(replies: list[Any]) -> None:
            added, popped = replies
            failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failed is not None:
                then(failed)
            elif popped is None:  # not within the first wait: the blocking client's rules
                rest = self.wait(step.queue, text(added), reply_key, request, clock, stream)
                asyncio.ensure_future(rest).add_done_callback(partial(self._waited, then))
            else:
                reply: Any
                try:
                    reply = decode_reply(popped[1])
                except Exception as exc:
                    reply = exc
                then(reply)

        first_wait = max(clock.slice(LONGEST_BLPOP_S), 0.01)
        self.send(
            [("XADD", stream, "*", *(item for pair in fields.items() for item in pair)),
             ("BLPOP", reply_key, f"{first_wait:.3f}")],
            sent,
        )  # fmt: skip

    def _waited(self, then: Callable[[Any], None], task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        then(error if isinstance(error, Exception) else task.result())
        self.upstream().flush()


class Drive:
    """One plan driven to its end: each step's result resumes it (see the module docstring)."""

    __slots__ = ("done", "plan", "runner", "starting", "stopped")

    def __init__(self, runner: Runner, plan: Plan[Any], done: Done) -> None:
        self.runner = runner
        self.plan = plan
        self.done = done
        self.starting = False
        self.stopped = False

    def cancel(self) -> None:
        """The client went away: what comes back is dropped."""
        self.stopped = True
        self.plan.close()

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
            while not isinstance(step, (Commands, Submit)):
                try:
                    result = local_result(step)
                except Exception as exc:
                    step = plan.throw(exc)
                    continue
                step = plan.send(result)
        except StopIteration as stop:
            self._end(stop.value)
            return
        except Exception as exc:
            self._end(exc)
            return
        self.carry_out(step)

    def carry_out(self, step: Commands | Submit) -> None:
        if isinstance(step, Submit):
            self.runner.submit(step, self.resume)
        elif step.transaction:
            self.runner.send([("MULTI",), *step.commands, ("EXEC",)], self._committed)
        else:
            self.runner.send(step.commands, self.resume)

    def _committed(self, replies: list[Any]) -> None:
        done = replies[-1]
        if done is None:
            done = redis.WatchError("the transaction was aborted")
        self.resume(done if isinstance(done, Exception) else list(done))

    def _end(self, result: Any) -> None:
        self.stopped = True
        if self.starting:  # a plan without I/O: its caller has not seen the drive yet
            asyncio.get_running_loop().call_soon(self.done, result)
        else:
            self.done(result)
