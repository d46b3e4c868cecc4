"""Completing a stream entry: outputs, statistics, reply, ack and delete, applied at most once.

Delivery is at-least-once, so one entry can be in two workers' hands at the same time: a worker that
stalled past the visibility timeout and the worker that reclaimed its entry. Both may finish. Their
completions must not both apply, or the requester gets two replies, statistics count twice, and a
late duplicate could overwrite an output the requester has already reused.

Why a Lua script and not MULTI/EXEC: a transaction cannot make its writes conditional, and WATCH on
the queue stream would abort on every XADD from any client. The script instead runs XACK first and
applies nothing unless XACK acknowledged the entry (returned 1). XACK removes the entry from the
group's pending list, so exactly one completion per entry can ever see 1 - whoever finishes first
wins, whatever consumer currently owns it, and the other's results (the same values: a re-run of the
same job) are dropped. Like a transaction, a script is atomic, so nothing is ever half applied.

Redis does not roll a script back when a command fails halfway, so the script first checks, without
writing anything, every command it is about to run: against the worker user's ACL
(``redis.acl_check_cmd``, Redis >= 7) and against the type of keys that must be lists, hashes or
streams. A command that would fail comes back as a rejection and the caller completes the entry
differently (an error reply; or no reply when the reply key itself is unusable). Once XACK has
written, Redis lets the script keep writing even under maxmemory (it only refuses a script's first
write), so an out-of-memory Redis refuses the whole completion, never half of it.

Redis Cluster: a script may only touch keys of one slot, and a job's queue, reply, statistics and
output keys usually live in several. There, completion must be split: output tensors written first
(idempotent: a re-run writes the same values), then this script in the queue's slot with the reply
key hash-tagged like the queue (``aiworker:reply:{CPU}...``) doing XACK, XDEL and LPUSH, then the
statistics, counted only when the script returned 1. See the README's operations section.
(Only to name a key the ACL denies does ``Completer`` re-run the script with undeclared keys,
which Cluster would refuse; there the denial is reported without the key's name.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from aiworker.protocol.keys import CONSUMER_GROUP

COMPLETE_SCRIPT = """
-- KEYS[1] the queue, then every key the commands touch. ARGV: group, number of undeclared keys
-- (0, or keys passed here instead of KEYS, only to name a key the ACL denies), those keys,
-- number of entries, then per entry: its id, its number of commands, and per command: number of
-- arguments after the key, name, index of its key, arguments.
local group = ARGV[1]
local K, i = KEYS, 3
local undeclared = tonumber(ARGV[2])
if undeclared > 0 then
  K = {KEYS[1]}
  for j = 1, undeclared do K[j + 1] = ARGV[2 + j] end
  i = 3 + undeclared
end
local entries = {}
local count = tonumber(ARGV[i])
i = i + 1
for e = 1, count do
  local id, ncmds = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local cmds = {}
  for c = 1, ncmds do
    local argc = tonumber(ARGV[i])
    local cmd = {ARGV[i + 1], K[tonumber(ARGV[i + 2])]}
    for j = 1, argc do cmd[j + 2] = ARGV[i + 2 + j] end
    cmds[c] = cmd
    i = i + 3 + argc
  end
  entries[e] = {id, cmds}
end
-- Keys these commands need to be of one type (or missing), else they would fail mid-script;
-- the type a key will have when the command runs counts, after earlier commands here.
local needs = {HSET = 'hash', HINCRBY = 'hash', LPUSH = 'list', XADD = 'stream'}
local makes = {DEL = 'none', HSET = 'hash', HINCRBY = 'hash', LPUSH = 'list', XADD = 'stream'}
local will = {}
for _, entry in ipairs(entries) do
  for _, cmd in ipairs(entry[2]) do
    if redis.acl_check_cmd and not redis.acl_check_cmd(unpack(cmd)) then
      return {'NOPERM', cmd[1], cmd[2]}
    end
    local want = needs[cmd[1]]
    if want then
      local t = will[cmd[2]] or redis.call('TYPE', cmd[2])['ok']
      if t ~= 'none' and t ~= want then return {'WRONGTYPE', cmd[1], cmd[2]} end
    end
    if makes[cmd[1]] then will[cmd[2]] = makes[cmd[1]] end
  end
end
-- XACK is 1 only for the first completion of an entry: the others apply nothing.
local done = {}
for e, entry in ipairs(entries) do
  if redis.call('XACK', KEYS[1], group, entry[1]) == 1 then
    redis.call('XDEL', KEYS[1], entry[1])
    for _, cmd in ipairs(entry[2]) do redis.call(unpack(cmd)) end
    done[e] = 1
  else
    done[e] = 0
  end
end
return done
"""


@dataclass(frozen=True)
class Result:
    """What a completion attempt did."""

    applied: bool  # this delivery completed the entry and its commands ran
    duplicate: bool = False  # the entry was no longer pending: another delivery completed it
    rejected: str = ""  # "NOPERM" or "WRONGTYPE" when a command could not run: nothing applied
    command: str = ""
    key: str = ""

    @property
    def reason(self) -> str:
        return f"{self.rejected} this worker cannot {self.command} key '{self.key}'"


def _arg(value: Any) -> Any:
    return value if isinstance(value, (bytes, bytearray, memoryview, str)) else str(value)


class Commands:
    """Commands to run when, and only when, this delivery completes the entry.

    It offers the subset of a redis-py pipeline that completions use (``delete``, ``hset``,
    ``hincrby``, ``lpush``, ``expire``, ``xadd``), so code that queues writes on a pipeline
    (``tensor_io.queue_write``, ``stats.record``) can queue them here instead. (Named apart from
    ``dispatch.Completion``, the finished entry that these commands complete.)
    """

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, list[Any]]] = []

    def _add(self, name: str, key: Any, *args: Any) -> Commands:
        key_text = key.decode() if isinstance(key, bytes) else str(key)
        self.commands.append((name, key_text, [_arg(a) for a in args]))
        return self

    def delete(self, *names: Any) -> Commands:
        for name in names:
            self._add("DEL", name)
        return self

    def hset(
        self,
        name: Any,
        key: Any = None,
        value: Any = None,
        mapping: Mapping[Any, Any] | None = None,
    ) -> Commands:
        pairs: list[Any] = [] if key is None else [key, value]
        for field, field_value in (mapping or {}).items():
            pairs += [field, field_value]
        return self._add("HSET", name, *pairs)

    def hincrby(self, name: Any, key: Any, amount: int = 1) -> Commands:
        return self._add("HINCRBY", name, key, amount)

    def lpush(self, name: Any, *values: Any) -> Commands:
        return self._add("LPUSH", name, *values)

    def expire(self, name: Any, seconds: int) -> Commands:
        return self._add("EXPIRE", name, seconds)

    def xadd(
        self,
        name: Any,
        fields: Mapping[Any, Any],
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> Commands:
        args: list[Any] = []
        if maxlen is not None:
            args += ["MAXLEN", "~" if approximate else "=", maxlen]
        args.append("*")
        for field, value in fields.items():
            args += [field, value]
        return self._add("XADD", name, *args)


Entry = tuple[str, "Commands"]


def script_args(
    queue: str, entries: Sequence[Entry], declare: bool = True
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ``COMPLETE_SCRIPT``: every key declared once (or, with ``declare=False``,
    only the queue, the others passed as arguments); commands refer to keys by index."""
    keys = [queue]
    index: dict[str, int] = {queue: 1}
    body: list[Any] = [len(entries)]
    for entry_id, commands in entries:
        body += [entry_id, len(commands.commands)]
        for name, key, args in commands.commands:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            body += [len(args), name, index[key], *args]
    if declare:
        return keys, [CONSUMER_GROUP, 0, *body]
    return [queue], [CONSUMER_GROUP, len(keys) - 1, *keys[1:], *body]


class Completer:
    """Runs completions for one Redis connection pool (the script is loaded once, re-loaded by
    redis-py after a Redis restart empties the script cache)."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._script = r.register_script(COMPLETE_SCRIPT)

    def complete(self, queue: str, entry_id: str, commands: Commands | None = None) -> Result:
        """Apply ``commands`` and acknowledge + delete the entry, if it is still pending."""
        results = self.complete_many(queue, [(entry_id, commands or Commands())])
        return results if isinstance(results, Result) else results[0]

    def complete_many(self, queue: str, entries: Sequence[Entry]) -> list[Result] | Result:
        """Complete several entries in one script: each one's commands run only if that entry is
        still pending. A rejection (a single ``Result``) means nothing at all was applied."""
        keys, argv = script_args(queue, entries)
        try:
            reply = self._script(keys=keys, args=argv)
        except redis.exceptions.NoPermissionError:
            # Redis refused the script as a whole because the ACL denies one of its declared
            # keys; nothing ran. Run it once more with undeclared keys (standalone Redis allows
            # that) so that its own ACL pre-flight names the command and key it may not write.
            keys, argv = script_args(queue, entries, declare=False)
            reply = self._script(keys=keys, args=argv)
        if isinstance(reply, list) and reply and isinstance(reply[0], (bytes, str)):
            kind, command, key = (_text(v) for v in _as_list(reply))
            return Result(applied=False, rejected=kind, command=command, key=key)
        if not isinstance(reply, list) or len(reply) != len(entries):
            raise redis.ResponseError(f"unexpected completion script reply {reply!r}")
        return [Result(applied=flag == 1, duplicate=flag != 1) for flag in reply]


def _as_list(value: Any) -> Sequence[Any]:
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return value
    raise redis.ResponseError(f"unexpected completion script reply {value!r}")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
