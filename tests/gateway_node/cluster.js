// ioredis' cluster client against a gateway that emulates a one-shard cluster (--emulate-cluster):
// it reads CLUSTER SLOTS, then sends AI.* and plain commands as to a cluster node. Exits non-zero
// on the first mismatch. Usage: node cluster.js PORT
"use strict";
const assert = require("node:assert/strict");
const Redis = require("ioredis");

const port = Number(process.argv[2]);
const cluster = new Redis.Cluster([{ host: "127.0.0.1", port }], {
  redisOptions: { maxRetriesPerRequest: 0 },
  clusterRetryStrategy: () => null,
});

async function main() {
  assert.equal(await cluster.call("AI.TENSORSET", "{a}t", "FLOAT", 2, "VALUES", 1, 2), "OK");
  assert.deepEqual(await cluster.call("AI.TENSORGET", "{a}t", "VALUES"), ["1", "2"]);
  assert.equal(await cluster.set("{a}k", "v"), "OK");
  assert.equal(await cluster.get("{a}k"), "v");
  assert.equal(await cluster.call("AI.MODELSTORE", "{a}m", "STUB", "CPU", "BLOB",
    JSON.stringify({ op: "add" })), "OK");
  assert.equal(await cluster.call("AI.MODELEXECUTE", "{a}m", "INPUTS", 2, "{a}t", "{a}t",
    "OUTPUTS", 1, "{b}o"), "OK");
  assert.deepEqual(await cluster.call("AI.TENSORGET", "{b}o", "VALUES"), ["2", "4"]);
  const nodes = cluster.nodes("master");
  assert.equal(nodes.length, 1); // one shard owning every slot, at the gateway's address
  assert.equal(nodes[0].options.port, port);
  cluster.disconnect();
  console.log("all cluster commands ok");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
