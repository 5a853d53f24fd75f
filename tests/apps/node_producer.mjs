// Enqueues one asyncq task from Node.js and prints its final result record, as JSON.
//
// Uses only npm's `amqplib` and `redis` and what docs/protocol.md says ("Publishing from
// another language"); the Lua publish script is read from that page itself.
// Usage: node node_producer.mjs '<json: broker, broker_url, redis_url, prefix, results_prefix, queue, task, args, doc>'

import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

// The packages live where the test installed them (NODE_DEPS), not beside this file.
const require = createRequire(join(process.env.NODE_DEPS, "node_modules"));
const amqp = require("amqplib");
const { createClient } = require("redis");

const spec = JSON.parse(process.argv[2]);
const id = randomUUID();
const envelope = JSON.stringify({ id, task: spec.task, args: spec.args, queue: spec.queue });

async function publishAmqp() {
  const connection = await amqp.connect(spec.broker_url);
  try {
    const channel = await connection.createConfirmChannel();
    channel.publish("asyncq", spec.queue, Buffer.from(envelope), {
      messageId: id,
      contentType: "application/json",
      deliveryMode: 2,
    });
    await channel.waitForConfirms();
  } finally {
    await connection.close();
  }
}

async function publishRedis(client) {
  const doc = readFileSync(spec.doc, "utf8");
  const script = doc.match(/```lua\n([\s\S]*?)```/)[1];
  const base = `${spec.prefix}:{${spec.queue}}:`;
  const keys = [];
  for (let p = 0; p < 10; p++) keys.push(`${base}ready:${p}`);
  for (const name of ["delayed", "inflight", "msg", "count", "wake", "dead", "owner"]) keys.push(base + name);
  const handle = "0" + randomBytes(12).toString("hex");
  const record = `${Buffer.byteLength(id)}:${id}${envelope}`;
  const stored = await client.eval(script, { keys, arguments: ["1", handle, "0", record] });
  if (stored !== 1) throw new Error(`publish script returned ${stored}`);
}

async function finalRecord(client) {
  const key = `${spec.results_prefix}:result:{${id}}`;
  const subscriber = client.duplicate();
  await subscriber.connect();
  try {
    let wake;
    const published = new Promise((resolve) => (wake = resolve));
    await subscriber.subscribe(key, (value) => wake(value));
    const stored = await client.get(key);
    const value = stored !== null && stored[0] === "F" ? stored : await published;
    return JSON.parse(value.slice(1));
  } finally {
    await subscriber.quit();
  }
}

const client = createClient({ url: spec.redis_url });
await client.connect();
try {
  if (spec.broker === "amqp") await publishAmqp();
  else await publishRedis(client);
  const record = await finalRecord(client);
  console.log(JSON.stringify({ id, record }));
} finally {
  await client.quit();
}
