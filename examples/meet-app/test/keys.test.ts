// src/cache-keys.ts is what `meetcache-keys` writes from this database's catalog (the
// application's CI check), and its functions render what meetcache.key() renders.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import pg from "pg";
import { cacheKeys } from "../src/cache-keys.js";

test("npx meetcache-keys --check: the committed module matches meetcache.families", () => {
  const r = spawnSync("npx", ["--no-install", "meetcache-keys", "--database-url", process.env.DATABASE_URL!, "--out", "src/cache-keys.ts", "--check"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
});

test("cacheKeys renders the keys meetcache.key() renders", async () => {
  const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  try {
    const key = async (f: string, ...a: string[]) => (await db.query("SELECT meetcache.key($1, VARIADIC $2::text[]) AS k", [f, a])).rows[0].k;
    assert.equal(cacheKeys.meeting("m1"), await key("meeting", "m1"));
    assert.equal(cacheKeys.userMeetings("u1"), await key("user_meetings", "u1"));
    assert.equal(cacheKeys.meetingByInvite("inv-1"), await key("meeting_by_invite", "inv-1"));
    assert.equal(cacheKeys.liveMeetings(), await key("live_meetings"));
    assert.equal(cacheKeys.recentChats("m1"), await key("recent_chats", "m1"));
  } finally {
    await db.end();
  }
});
