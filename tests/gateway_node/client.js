// A RedisAI client written with ioredis, as a Node program would use RedisAI: every kind of AI.*
// command the gateway serves, with the reply types RedisAI sent, a pipeline and MULTI. Exits
// non-zero on the first mismatch. Usage: node client.js PORT
"use strict";
const assert = require("node:assert/strict");
const { error } = require("./expect");
const Redis = require("ioredis");

const port = Number(process.argv[2]);
const redis = new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 0 });

async function main() {
  const blob = Buffer.from(new Float32Array([1, 2, 3, 4]).buffer);
  assert.equal(await redis.call("AI.TENSORSET", "a", "FLOAT", 2, 2, "BLOB", blob), "OK");
  const got = await redis.callBuffer("AI.TENSORGET", "a", "META", "BLOB");
  assert.equal(got[0].toString(), "dtype");
  assert.equal(got[1].toString(), "FLOAT");
  assert.deepEqual(got[3], [2, 2]); // dims are integers
  assert.ok(got[5].equals(blob));
  assert.deepEqual(await redis.call("AI.TENSORGET", "a", "VALUES"), ["1", "2", "3", "4"]);
  assert.equal(await redis.call("AI.TENSORSET", "i", "INT64", 3, "VALUES", 1, -2, 3), "OK");
  assert.deepEqual(await redis.call("AI.TENSORGET", "i", "VALUES"), [1, -2, 3]);
  assert.equal(await error(redis.call("AI.TENSORGET", "nope")),
    "ERR tensor key is empty or in a different shard");
  assert.equal(await error(redis.call("AI.TENSORSET", "a", "BAD", 1)), "ERR invalid data type");
  assert.equal(await redis.type("a"), "hash");

  const model = JSON.stringify({ op: "add" });
  assert.equal(await redis.call("AI.MODELSTORE", "m", "STUB", "CPU", "TAG", "v1", "BLOB", model),
    "OK");
  const meta = await redis.call("AI.MODELGET", "m", "META");
  assert.deepEqual(meta.slice(0, 10), ["backend", "STUB", "device", "CPU", "tag", "v1",
    "batchsize", 0, "minbatchsize", 0]);
  assert.equal(await redis.call("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b"),
    "OK");
  assert.deepEqual(await redis.call("AI.TENSORGET", "b", "VALUES"), ["2", "4", "6", "8"]);
  assert.equal(await redis.call("AI.MODELRUN", "m", "INPUTS", "a", "b", "OUTPUTS", "c"), "OK");
  const info = await redis.call("AI.INFO", "m");
  assert.deepEqual(info.slice(0, 4), ["key", "m", "type", "MODEL"]);
  assert.equal(info[15], 2); // calls
  assert.deepEqual(await redis.call("AI._MODELSCAN"), [["m", "v1"]]);
  const dag = await redis.call("AI.DAGEXECUTE", "LOAD", 1, "a", "|>",
    "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "x", "|>",
    "AI.TENSORGET", "x", "VALUES");
  assert.deepEqual(dag, ["OK", ["2", "4", "6", "8"]]);
  assert.equal(await redis.call("AI.CONFIG", "GET", "MODEL_CHUNK_SIZE"), 535822336);

  // a pipeline mixing AI.* and plain commands: replies in order
  const piped = await redis.pipeline()
    .set("k", "1")
    .call("AI.TENSORSET", "p", "INT8", 1, "VALUES", 7)
    .exists("p")
    .call("AI.TENSORGET", "p", "VALUES")
    .incr("k")
    .call("AI.TENSORGET", "missing")
    .get("k")
    .exec();
  assert.deepEqual(piped.slice(0, 5).map(([, value]) => value), ["OK", "OK", 1, [7], 2]);
  assert.equal(piped[5][0].message, "ERR tensor key is empty or in a different shard");
  assert.equal(piped[6][1], "2");

  // MULTI: an AI.* command is queued and its place in EXEC's reply is RedisAI's error
  const tx = await redis.multi().set("t", "1")
    .call("AI.MODELEXECUTE", "m", "INPUTS", 1, "a", "OUTPUTS", 1, "z").incr("t").exec();
  assert.equal(tx[0][1], "OK");
  assert.equal(tx[1][0].message,
    "ERR Cannot run RedisAI command within a transaction or a LUA script");
  assert.equal(tx[2][1], 2);

  assert.equal(await redis.call("AI.MODELDEL", "m"), "OK");
  assert.equal(await error(redis.call("AI.MODELGET", "m")), "ERR model key is empty");
  console.log("node client: all RedisAI commands ok");
}

main().then(
  () => redis.quit(),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
