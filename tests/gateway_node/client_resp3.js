// A RedisAI client written with node-redis 5 in RESP3 (it sends HELLO 3), with node-redis' own
// client-side cache on (CLIENT TRACKING: invalidations come as pushes between replies): AI.*
// commands with RedisAI's RESP3 reply types, a job, a pipeline and a transaction mixing AI.* and
// plain commands, and a cached key invalidated meanwhile. Exits non-zero on the first mismatch.
// Usage: node client_resp3.js PORT
"use strict";
const assert = require("node:assert/strict");
const { error } = require("./expect");
const { createClient } = require("redis");

const port = Number(process.argv[2]);
const socket = { port, host: "127.0.0.1", reconnectStrategy: false };

async function until(check, what) {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function main() {
  const client = createClient({ socket, RESP: 3, clientSideCache: { ttl: 0, maxEntries: 0 } });
  const other = createClient({ socket }); // RESP2
  for (const c of [client, other]) {
    c.on("error", (err) => {
      console.error(err);
      process.exit(2);
    });
    await c.connect();
  }
  const ai = (...args) => client.sendCommand(args.map(String));

  assert.equal(await ai("AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 1.5, 2), "OK");
  assert.deepEqual(await ai("AI.TENSORGET", "a", "VALUES"), [1.5, 2]); // doubles in RESP3
  const meta = await ai("AI.TENSORGET", "a", "META", "VALUES");
  assert.deepEqual(meta, ["dtype", "FLOAT", "shape", [2], "values", [1.5, 2]]);
  assert.equal(await ai("AI.TENSORSET", "i", "INT8", 2, "VALUES", -1, 3), "OK");
  assert.deepEqual(await ai("AI.TENSORGET", "i", "VALUES"), [-1, 3]);
  assert.equal(await ai("AI.CONFIG", "GET", "NOPE"), null);
  assert.equal(await error(ai("AI.TENSORGET", "nope")),
    "ERR tensor key is empty or in a different shard");

  assert.equal(await ai("AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", '{"op": "add"}'), "OK");
  assert.equal(await ai("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b"), "OK");
  assert.deepEqual(await ai("AI.TENSORGET", "b", "VALUES"), [3, 4]);
  const info = await ai("AI.INFO", "m");
  assert.deepEqual(info.slice(0, 4), ["key", "m", "type", "MODEL"]);

  // a cached key: the second GET is served from node-redis' cache, until Redis' invalidation
  // push (through the gateway, between the replies to other commands) drops it
  await client.set("k", "1");
  assert.equal(await client.get("k"), "1");
  assert.equal(await client.get("k"), "1");
  await other.set("k", "2");
  assert.deepEqual(await ai("AI.TENSORGET", "i", "VALUES"), [-1, 3]);
  await until(async () => (await client.get("k")) === "2", "the invalidation of k");

  // a pipeline and a transaction mixing AI.* and plain commands, replies in order
  const piped = await client.multi()
    .set("p", "x")
    .addCommand(["AI.TENSORGET", "a", "META"])
    .get("p")
    .exec();
  assert.deepEqual(piped, ["OK", ["dtype", "FLOAT", "shape", [2]], "x"]);
  let replies = null;
  try {
    await client.multi()
      .addCommand(["AI.MODELEXECUTE", "m", "INPUTS", "2", "a", "a", "OUTPUTS", "1", "b"])
      .get("p")
      .exec();
  } catch (err) {
    replies = err.replies; // node-redis' MultiErrorReply: a job is refused inside MULTI
  }
  assert.equal(replies[0].message,
    "ERR Cannot run RedisAI command within a transaction or a LUA script");
  assert.equal(replies[1], "x");

  await client.quit();
  await other.quit();
  console.log("all RESP3 commands ok");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
