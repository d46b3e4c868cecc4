"""``aiworker gateway``: the RedisAI wire on stock Redis.

A server speaking the Redis protocol that clients connect to instead of Redis: AI.* commands are
answered as RedisAI 1.2.7 answered them, by translating them into aiworker's hashes and job
streams (``translate``); every other command passes through to Redis on a connection of the
client's own, replies in order (``session``). Modules, bottom up:

* ``resp``: RESP2 replies written and Redis' replies framed; ``frames``: client commands read with
  limits (hiredis's reader); ``commands``: AI.* arguments -> checked requests;
* ``translate``: each request as a plan returning RedisAI's reply; ``runner``: plans driven on the
  client's own Redis connection; ``transaction``: AI.* commands inside MULTI; ``aiclients``: per
  DB and user, what those runs keep, and the blocking clients for the work done in threads;
* ``upstream``: a client's connection to Redis; ``routers``: one Redis, or the masters of a
  cluster; ``cluster``: cluster-shaped replies and the slot map; ``fanout``: the commands about
  every key or node on every master;
* ``session``: one client connection, ``hooks``: what it learns from Redis' replies; ``server``:
  listening (TCP, TLS, unix socket).
"""

from aiworker.gateway.config import GatewayConfig
from aiworker.gateway.server import Gateway, serve

__all__ = ["Gateway", "GatewayConfig", "serve"]
