"""A job's first round trip, as every driver of the wait plan sends it (the blocking and asyncio
clients on one Redis or a cluster, and the gateway): the entry's XADD (or the enqueue script of a
bounded queue, and a read of its limit when due: ``storage.queues.Enqueuer``) and a first look at
the job's private reply list (``reply_lists``), so that a fast job is answered in one round trip.
Pure code: each driver sends the commands on its own connections and handles its own losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiworker.client.ops import refusal_in
from aiworker.client.reply_lists import Command, PrivateList
from aiworker.client.wait_plan import Enqueue, Enqueued, bounded
from aiworker.storage.queues import Enqueuer
from aiworker.storage.wire import aborted_by, executed

# The first wait for the reply where the entry may be refused (a queue's length limit, a guard):
# a refusal is said at once (a job that waits in a full queue needs more round trips anyway).
FIRST_WAIT_REFUSABLE_S = 0.01


def commands(
    enqueuer: Enqueuer, step: Enqueue, reply_list: PrivateList, longest: float
) -> tuple[list[Command], int]:
    """The round trip's commands, and how many of them add the entry: with a guard
    (``Enqueue.guard``) in one MULTI with them, which a refusal aborts."""
    wait = step.wait
    if step.guard or enqueuer.limited(step.stream):  # a refused entry must not wait for its reply
        wait = min(wait, FIRST_WAIT_REFUSABLE_S)
    add = enqueuer.commands(step.stream, step.fields)
    if step.guard:
        add = [("MULTI",), *step.guard, *add, ("EXEC",)]
    look = reply_list.look(bounded(wait, longest))  # one command: nothing read yet to remove
    return [*add, *look], len(add)


def enqueued(
    enqueuer: Enqueuer,
    step: Enqueue,
    reply_list: PrivateList,
    replies: Sequence[Any],
    added: int,
) -> Enqueued:
    """The round trip's replies (and any of commands sent after it) as the plan takes them (the
    entry's error raises); without the look's (only the entry's were answered) the wait goes on
    with nothing read."""
    adds = list(replies[:added])
    if step.guard:
        adds = _committed_adds(adds, len(step.guard))
    entry_id = enqueuer.entry_id(step.stream, adds)
    looked = replies[added : added + 1]
    return Enqueued(entry_id, reply_list.looked(looked) if looked else None)


def _committed_adds(replies: list[Any], guarded: int) -> list[Any]:
    """The replies of the entry's commands from those of ``MULTI, guard, commands, EXEC``: a
    guard's refusal (Redis' NOPERM as it was queued, which aborted the EXEC) raised first, then
    an entry command's (Redis full: OOM), rather than EXEC's EXECABORT."""
    refused = refusal_in(replies[1 : 1 + guarded])
    if refused is not None:
        raise refused
    done = executed(aborted_by(replies[-1], replies[1 + guarded : -1]))
    if isinstance(done, Exception):
        raise done
    return done[guarded:]
