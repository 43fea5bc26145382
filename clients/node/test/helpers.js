// What the integration tests share: the servers of test/clients.sh (DATABASE_URL,
// MEETCACHE_REDIS_URL), a database with meetcache and the camelCase schema attached, and a
// loader the test releases by hand.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { Pool } = require("pg");
const Redis = require("ioredis");

const repo = process.env.MEETCACHE_REPO || path.resolve(__dirname, "../../..");

function servers() {
  if (!process.env.DATABASE_URL || !process.env.MEETCACHE_REDIS_URL)
    throw new Error("DATABASE_URL and MEETCACHE_REDIS_URL must be set (bash test/clients.sh clients/node)");
  const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
  const redis = new Redis(process.env.MEETCACHE_REDIS_URL);
  return { pool, redis };
}

// CREATE EXTENSION meetcache, the camelCase schema, attach_defaults (once per database)
async function setupSchema(pool) {
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM pg_extension WHERE extname = 'meetcache'");
  if (rows[0].n > 0) return;
  await pool.query(fs.readFileSync(path.join(repo, "test/fixtures/meet_camel.sql"), "utf8"));
  await pool.query("CREATE EXTENSION meetcache");
  await pool.query("SELECT meetcache.attach_defaults()");
}

async function families(pool) {
  const { FAMILIES_QUERY, toFamily } = require("../dist/cjs/generate.js");
  return (await pool.query(FAMILIES_QUERY)).rows.map(toFamily);
}

// a promise and its resolve: a loader that waits for the test
function gate() {
  let open;
  const p = new Promise((resolve) => { open = resolve; });
  return { wait: () => p, open };
}

// wait (polling) until cond() is true; fails after ms
async function until(cond, what, ms = 10000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

module.exports = { repo, servers, setupSchema, families, gate, until };
