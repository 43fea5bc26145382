// Each write the seeds list, made with Prisma through the app's write routes (which hold no
// cache code), makes the next read of every route fresh: all keys are filled first, then
// the write, then every cached key must equal a fresh run of its query.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { allPaths, allReads, seed, staleKeys, start, type App } from "./harness.js";

let app: App;
before(async () => {
  app = await start();
  await seed(app);
});
after(() => app.close());

const writes: [string, () => Promise<unknown>][] = [
  ["create a meeting", () => app.send("POST", "/api/meetings", { id: "m4", title: "New", hostId: "u2", inviteCode: "inv-m4", status: "SCHEDULED", scheduledAt: new Date() })],
  ["update its status (SCHEDULED -> LIVE)", () => app.send("PATCH", "/api/meetings/m4", { status: "LIVE", startedAt: new Date() })],
  ["change its host", () => app.send("PATCH", "/api/meetings/m4", { hostId: "u3" })],
  ["retitle a meeting", () => app.send("PATCH", "/api/meetings/m1", { title: "Weekly sync (moved)" })],
  ["join", () => app.send("POST", "/api/meetings/m4/join", { id: "p9", userId: "u4" })],
  ["leave", () => app.send("POST", "/api/meetings/m1/leave", { userId: "u2" })],
  ["chat", () => app.send("POST", "/api/meetings/m4/chats", { id: "c9", userId: "u4", message: "hi" })],
  ["recording starts processing", () => app.send("PUT", "/api/recordings/m4", { id: "r4", status: "PROCESSING" })],
  ["recording ready", () => app.send("PUT", "/api/recordings/m4", { status: "READY", fileUrl: "https://x/r4.mp4", durationSeconds: 60, fileSizeBytes: 123456789 })],
  ["rename a user (embedded in other keys)", () => app.send("PATCH", "/api/users/u4", { name: "David" })],
  ["end a meeting", () => app.send("PATCH", "/api/meetings/m1", { status: "ENDED", endedAt: new Date() })],
  ["delete a meeting, with cascades", () => app.send("DELETE", "/api/meetings/m4")],
];

for (const [what, write] of writes) {
  test(`${what}: the next read is fresh`, async () => {
    const paths = await allPaths(app, ["m4"]);
    for (const p of paths) await app.get(p); // fill every key
    const before = await staleKeys(app, await allReads(app, ["m4"]));
    assert.deepEqual(before.stale, []);
    assert.ok(before.checked >= paths.length - 6, `only ${before.checked} keys cached`);
    await write();
    const afterWrite = await staleKeys(app, await allReads(app, ["m4"]));
    assert.deepEqual(afterWrite.stale, [], `stale after "${what}"`);
    // and the HTTP reads return the fresh data
    for (const p of paths) await app.get(p);
    assert.deepEqual((await staleKeys(app, await allReads(app, ["m4"]))).stale, []);
  });
}

test("the recording's TTL follows its status (ttl_by_value: 30 s while PROCESSING)", async () => {
  await app.send("POST", "/api/meetings", { id: "m5", title: "Rec", hostId: "u1", inviteCode: "inv-m5" });
  await app.send("PUT", "/api/recordings/m5", { id: "r5", status: "PROCESSING" });
  await app.get("/api/recordings/m5");
  assert.ok((await app.redis.ttl("meeting:m5:recording")) <= 30);
  await app.send("PUT", "/api/recordings/m5", { status: "READY" });
  assert.deepEqual(await app.get("/api/recordings/m5"), (await app.get("/api/recordings/m5")));
  assert.ok((await app.redis.ttl("meeting:m5:recording")) > 30);
  // BigInt and Date as stored: an exact number, an ISO string
  const r3 = (await app.get("/api/recordings/m3")) as { fileSizeBytes: number; createdAt: string };
  assert.equal(await app.redis.get("meeting:m3:recording").then((t) => /"fileSizeBytes":9007199254740993/.test(t ?? "")), true);
  assert.match(r3.createdAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});
