"""Which Redis connection of a client's carries each of its plain commands.

``SingleRouter``: one connection, opened on the first plain command (a client that only sends AI.*
commands costs Redis no connection). ``ClusterRouter``: one connection per master of a real Redis
Cluster, each command sent to the master of its first key's slot, keyless ones to one master
but those about every key or every node (DBSIZE, SCAN, FLUSHALL, SCRIPT LOAD ...: ``fanout``); a
MOVED or ASK reply sends the command again where the cluster says, so the client sees one node. A
transaction stays on one master: WATCH goes where its key lives and MULTI follows it; a MULTI
without WATCH goes to one master and moves to the master of the first command after it that
has a key (DISCARD there, MULTI and the keyless commands queued before it on the right one: a
client that typed MULTI alone waits for its OK); everything until EXEC or DISCARD follows,
keyless commands too (a FLUSHALL queued there flushes that master only).
"""

from __future__ import annotations

from typing import Any

from .cluster import Node, SlotMap, command_keys, redirect_target
from .fanout import FANNED_OUT, FanOut, plan
from .upstream import Slot, Target, Upstream, ignore

_UNPIN = {b"EXEC", b"DISCARD", b"UNWATCH", b"RESET"}


class SingleRouter:
    """A client's one connection to a single Redis."""

    def __init__(self, session: Any, target: Target, hello: list[list[bytes]]) -> None:
        self.session = session  # the owner of its connections (``upstream.Upstream``)
        self.target = target
        self.hello = hello  # what a new connection sends first (the URL's user and DB)
        self.upstream: Upstream | None = None
        # the URL's SELECT was sent on a connection Redis has not signed in yet (its URL has
        # no password, or a wrong one): refused, it goes again after each AUTH until one passes
        self.unselected = False

    def route(self, args: list[bytes], slot: Slot) -> Upstream:
        return self.own()

    def own(self) -> Upstream:
        """The connection (opened on first use)."""
        if self.upstream is None:
            self.upstream = Upstream(self.session, self.target, self.hello)
            if self.session.upstreams_paused:
                self.upstream.pause()
            self.unselected = True
        return self.upstream

    def redirect(self, upstream: Upstream, slot: Slot, data: bytes) -> bool:
        return False

    def lost(self, upstream: Upstream) -> None:
        """The connection to Redis was lost: nothing to learn on a single Redis."""

    def spare(self, upstream: Upstream) -> bool:
        """Never: a single Redis is the client's whole connection (its DB, user, state)."""
        return False

    def reset(self, sent_on: Upstream) -> None:
        """RESET went to Redis: the connection is then as a new one is (the gateway's URL's
        user and DB, which ``Session.signed_out`` takes for the client's identity)."""
        for command in self.hello:
            sent_on.send(command, Slot(internal=ignore))
        self.unselected = True

    def signing_in(self) -> None:
        """An AUTH (or HELLO with AUTH) went to Redis: after it, the URL's SELECT that Redis
        refused before it, so that a client that signs in uses the URL's DB."""
        if self.unselected and self.session.gw.url_refused:
            for command in self.hello:
                if command[0] == b"SELECT":
                    self.own().send(command, Slot(internal=ignore))

    def authenticated(self, credentials: list[bytes]) -> None:
        """AUTH went through the one connection: its DB is selected now."""
        self.unselected = False

    def speak(self, resp3: bool) -> None:
        """HELLO went through the one connection: its replies come in that protocol now."""
        if self.upstream is not None:
            self.upstream.resp3 = resp3

    def tunnel_upstream(self) -> Upstream:
        assert self.upstream is not None
        return self.upstream

    def upstreams(self) -> list[Upstream]:
        return [self.upstream] if self.upstream is not None else []

    def flush(self) -> None:
        if self.upstream is not None:
            self.upstream.flush()

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()


class ClusterRouter:
    """A client's connections to the masters of a Redis Cluster (see the module docstring)."""

    def __init__(self, session: Any, slots: SlotMap, target: Any, hello: list[list[bytes]]) -> None:
        self.session = session  # the owner of its connections (``upstream.Upstream``)
        self.slots = slots
        self.target_for = target  # Node -> Target
        self.base_hello = hello  # what a new connection sends first (the URL's user)
        self.hello = list(hello)  # and what the client made of its connection since
        self.connections: dict[Node, Upstream] = {}
        self.pinned: Upstream | None = None
        self.movable = False  # a MULTI without WATCH, no command with a key queued yet
        self.keyless: list[list[bytes]] = []  # and the commands queued in it so far
        self.tunneled: Upstream | None = None

    def _upstream(self, node: Node) -> Upstream:
        upstream = self.connections.get(node)
        if upstream is None or upstream.closed:
            upstream = Upstream(self.session, self.target_for(node), self.hello)
            if self.session.upstreams_paused:  # its client does not read its replies
                upstream.pause()
            self.connections[node] = upstream
        return upstream

    def own(self) -> Upstream:
        """The master a transaction is pinned to, else the default one."""
        return self.pinned or self._upstream(self.slots.default())

    def _node(self, args: list[bytes]) -> Node:
        keys = command_keys(self.slots.keys, args)
        return self.slots.node_of(keys[0]) if keys else self.slots.default()

    def route(self, args: list[bytes], slot: Slot) -> Upstream | FanOut:
        name = args[0].upper()
        if self.pinned is None:  # one of a transaction's is never sent elsewhere (``redirect``)
            slot.args = args
            if name in FANNED_OUT:
                spread = self._fan_out(args)
                if spread is not None:
                    return spread
        if self.pinned is not None:
            upstream = self.pinned
            if self.movable and name not in _UNPIN:
                if command_keys(self.slots.keys, args):
                    upstream = self._move_transaction(self._upstream(self._node(args)))
                    self.movable = False
                else:  # (PING, TIME ...): the transaction may still move, and take them along
                    self.keyless.append(args)
            else:
                self.movable = False
        else:
            upstream = self._upstream(self._node(args))
            if name in (b"MULTI", b"WATCH"):
                self.pinned = upstream
                self.movable = name == b"MULTI"
                self.keyless = []
        if name in _UNPIN:
            self.pinned = None
        if slot.tunnel:
            self.tunneled = upstream
        upstream.flush()
        return upstream

    def _fan_out(self, args: list[bytes]) -> FanOut | None:
        """A command for every master (or for those the client wrote to: WAIT), or None."""
        used = [node for node, upstream in self.connections.items() if not upstream.closed]
        found = plan(args, self.slots.nodes, used)
        if found is None:
            return None
        parts, merge = found
        sends = [(self._upstream(node), command) for node, command in parts]
        return FanOut(sends, merge, self.session.on_reply)

    def _move_transaction(self, to: Upstream) -> Upstream:
        """A MULTI no command with a key was queued in yet, moved to the master ``to``: the
        keyless ones queued so far are queued there again (the client had their QUEUED)."""
        pinned = self.pinned
        if pinned is not None and to is not pinned:
            pinned.send([b"DISCARD"], Slot(internal=ignore))
            pinned.flush()
            for command in ([b"MULTI"], *self.keyless):
                to.send(command, Slot(internal=ignore))
            self.pinned = to
        self.keyless = []
        return to

    def redirect(self, upstream: Upstream, slot: Slot, data: bytes) -> bool:
        """Send a command again after MOVED/ASK (at most 5 times; not one routed inside a
        transaction, even when the transaction ended before its reply came: a queued command
        sent elsewhere would run outside it)."""
        found = redirect_target(data)
        if found is None or slot.args is None or self.pinned is not None:
            return False
        if slot.redirects >= 5:
            return False
        slot.redirects += 1
        ask, node = found
        if not ask:
            self.slots.refresh_soon()
        target = self._upstream(node)
        if ask:
            target.send([b"ASKING"], Slot(internal=ignore))
        target.send(slot.args, slot)
        target.flush()
        return True

    def lost(self, upstream: Upstream) -> None:
        """A master could not be reached or went away: it may have failed over, and the map
        is read again (from any master that answers) for the connections made next; commands
        without a key go elsewhere for a while."""
        for node, known in self.connections.items():
            if known is upstream:
                self.slots.down(node)
        self.slots.refresh_soon()

    def spare(self, upstream: Upstream) -> bool:
        """Whether the client may go on without ``upstream``, a connection that failed: one
        to a master that never connected, holding no transaction and no pipe of the client's
        (nothing of its state was on it)."""
        return (
            upstream.transport is None
            and upstream is not self.pinned
            and upstream is not self.tunneled
        )

    def reset(self, sent_on: Upstream) -> None:
        """RESET reached one master: every connection is then as a new one is (signed out of
        the client's user on the others too, which still let it read its keys)."""
        self.hello = list(self.base_hello)
        for upstream in self.connections.values():
            if upstream.closed:
                continue
            if upstream is not sent_on:
                upstream.send([b"RESET"], Slot(internal=ignore))
            for command in self.base_hello:
                upstream.send(command, Slot(internal=ignore))
            upstream.flush()

    def signing_in(self) -> None:
        """An AUTH went to a master: nothing to select (a cluster has DB 0 only)."""

    def authenticated(self, credentials: list[bytes]) -> None:
        """AUTH reached one master: the others (open now or later) get it too."""
        command = [b"AUTH", *credentials]
        self.hello = [c for c in self.hello if c[0] != b"AUTH"] + [command]
        for upstream in self.connections.values():
            if not upstream.closed:
                upstream.send(command, Slot(internal=ignore))
                upstream.flush()

    def speak(self, resp3: bool) -> None:
        """HELLO reached one master: the others (open now or later) speak the same protocol."""
        command = [b"HELLO", b"3" if resp3 else b"2"]
        self.hello = [c for c in self.hello if c[0] != b"HELLO"] + ([command] if resp3 else [])
        for upstream in self.connections.values():
            if not upstream.closed:
                upstream.send(command, Slot(internal=ignore))
                upstream.flush()
                upstream.resp3 = resp3

    def tunnel_upstream(self) -> Upstream:
        assert self.tunneled is not None
        return self.tunneled

    def upstreams(self) -> list[Upstream]:
        return list(self.connections.values())

    def flush(self) -> None:
        for upstream in self.connections.values():
            upstream.flush()

    def close(self) -> None:
        for upstream in self.connections.values():
            upstream.close()
