"""Replies arriving on a client's one shared reply list, handed to the waiting jobs by identity:
the stream and entry id each job's XADD got (``Reply.answers``). Pure code (plus a lock), shared by
the blocking client (``shared_replies=True``) and the asyncio client.

The id is known only once the XADD returns, so a reply may arrive before its waiter registers:
between ``expect`` (before an XADD) and ``register`` (after), replies nobody waits for are kept
(up to ``max_early``); once no submission is in that window they are dropped, as is every reply
nobody waits for. A forward notice for a waiter moves it to the entry the notice announces, before
the next reply is routed: the list is read in order, and the notice was pushed before the
forwarded entry even existed, so the final reply always finds its waiter.
"""

from __future__ import annotations

import threading
from typing import Protocol

from aiworker.protocol.replies import Reply, Status

Identity = tuple[str, str]  # (stream, entry id)


class Mailbox(Protocol):
    """Where a waiting job receives its replies (the plan sorts them out): must not block."""

    def put(self, reply: Reply) -> None: ...


class ReplyRouter:
    """See the module docstring."""

    def __init__(self, max_early: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Identity, Mailbox] = {}
        self._where: dict[int, Identity] = {}  # id(mailbox) -> the identity it waits for now
        self._early: dict[Identity, list[Reply]] = {}
        self._kept = 0  # replies in _early
        self._unregistered = 0
        self._max_early = max_early

    def expect(self) -> None:
        """A submission is about to XADD."""
        with self._lock:
            self._unregistered += 1

    def cancel(self) -> None:
        """The XADD failed: nothing to register."""
        with self._lock:
            self._done_expecting()

    def register(self, identity: Identity, mailbox: Mailbox) -> None:
        """Route the replies about ``identity`` to ``mailbox`` (those that came already too)."""
        with self._lock:
            early = self._early.pop(identity, [])
            while early:
                reply = early.pop(0)
                self._kept -= 1
                mailbox.put(reply)
                if reply.status is Status.FORWARDED and reply.to is not None:
                    identity = reply.to
                    early += self._early.pop(identity, [])
            self._waiters[identity] = mailbox
            self._where[id(mailbox)] = identity
            self._done_expecting()

    def forget(self, mailbox: Mailbox) -> None:
        """The waiter is done (or gave up): later replies for it are dropped."""
        with self._lock:
            identity = self._where.pop(id(mailbox), None)
            if identity is not None and self._waiters.get(identity) is mailbox:
                del self._waiters[identity]

    def route(self, reply: Reply) -> None:
        """Hand ``reply`` to its waiter; keep it for a registration to come; or drop it."""
        identity = (reply.queue, reply.id)
        with self._lock:
            mailbox = self._waiters.get(identity)
            if mailbox is None:
                if self._unregistered and self._kept < self._max_early:
                    self._early.setdefault(identity, []).append(reply)
                    self._kept += 1
                return
            if reply.status is Status.FORWARDED and reply.to is not None:
                del self._waiters[identity]
                self._waiters[reply.to] = mailbox
                self._where[id(mailbox)] = reply.to
        mailbox.put(reply)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters) + self._unregistered

    def _done_expecting(self) -> None:
        self._unregistered -= 1
        if not self._unregistered:
            self._early.clear()
            self._kept = 0
