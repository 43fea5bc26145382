// What the app's suites share: the app on a free port (with the environment of
// test/clients.sh: DATABASE_URL, MEETCACHE_REDIS_URL), the seed data, HTTP helpers, and the
// staleness check (every cached key against a fresh run of its query).
import { AddressInfo } from "node:net";
import { Redis } from "ioredis";
import { createCache, encode, type Cache } from "meetcache";
import { createApp } from "../src/app.js";
import { families } from "../src/cache-keys.js";
import { createPrisma } from "../src/lib/prisma.js";
import { reads, type Read } from "../src/reads.js";

export async function start(wrap: (c: Cache) => Cache = (c) => c) {
  const prisma = createPrisma();
  const redis = new Redis(process.env.MEETCACHE_REDIS_URL ?? "redis://127.0.0.1:6379");
  const cache = createCache(redis, { families });
  const server = createApp(prisma, wrap(cache));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(base + path, {
      method,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const json = (await res.json()) as { data?: unknown; error?: string };
    if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${json.error}`);
    return json.data;
  };
  const r = reads(prisma);
  return {
    prisma, redis, cache, r,
    get: (path: string) => call("GET", path),
    send: call,
    async close() {
      await new Promise((resolve) => server.close(resolve));
      await prisma.$disconnect();
      redis.disconnect();
    },
  };
}
export type App = Awaited<ReturnType<typeof start>>;

const H = 3600e3;
export async function seed(app: App) {
  const { prisma, redis } = app;
  await prisma.$executeRawUnsafe(`TRUNCATE users, meetings, participants, chat_messages, recordings CASCADE`);
  await redis.flushall();
  const now = Date.now();
  await prisma.user.createMany({ data: ["Alice", "Bob", "Carol", "Dave"].map((name, i) => ({ id: `u${i + 1}`, name, email: `${name.toLowerCase()}@example.com` })) });
  await prisma.meeting.createMany({
    data: [
      { id: "m1", title: "Weekly sync", hostId: "u1", inviteCode: "inv-m1", status: "LIVE", startedAt: new Date(now - H) },
      { id: "m2", title: "Design review", hostId: "u1", inviteCode: "inv-m2", status: "SCHEDULED", scheduledAt: new Date(now + H) },
      { id: "m3", title: "Planning", hostId: "u2", inviteCode: "inv-m3", status: "ENDED" },
    ],
  });
  await prisma.participant.createMany({ data: [
    { id: "p1", meetingId: "m1", userId: "u1" }, { id: "p2", meetingId: "m1", userId: "u2" },
    { id: "p3", meetingId: "m3", userId: "u3" },
  ] });
  await prisma.chatMessage.createMany({ data: [{ id: "c1", meetingId: "m1", userId: "u2", message: "Hello" }] });
  await prisma.recording.create({ data: { id: "r3", meetingId: "m3", status: "READY", fileUrl: "https://x/r3.mp4", fileSizeBytes: 9007199254740993n } });
}

/** Every read of every row that exists or existed: the keys the app may have cached. */
export async function allReads(app: App, extraMeetings: string[] = []): Promise<Read[]> {
  const { prisma, r } = app;
  const users = (await prisma.user.findMany({ select: { id: true } })).map((u) => u.id);
  const ms = await prisma.meeting.findMany({ select: { id: true, inviteCode: true } });
  const meetings = [...new Set([...ms.map((m) => m.id), ...extraMeetings])];
  const all = [
    r.liveMeetings(), r.scheduledMeetings(),
    ...users.flatMap((u) => [r.user(u), r.userMeetings(u), r.userStats(u), r.userParticipations(u)]),
    ...meetings.flatMap((m) => [r.meeting(m), r.participants(m), r.participantCount(m), r.recentChats(m), r.recording(m), r.meetingByInvite(`inv-${m}`)]),
    ...ms.map((m) => r.meetingByInvite(m.inviteCode)),
  ];
  return [...new Map(all.map((read) => [read.key, read])).values()];
}

/** The HTTP paths that fill the same keys as allReads. */
export async function allPaths(app: App, extraMeetings: string[] = []): Promise<string[]> {
  const users = (await app.prisma.user.findMany({ select: { id: true } })).map((u) => u.id);
  const ms = await app.prisma.meeting.findMany({ select: { id: true, inviteCode: true } });
  const meetings = [...new Set([...ms.map((m) => m.id), ...extraMeetings])];
  return [
    "/api/meetings/live", "/api/meetings/scheduled",
    ...users.flatMap((u) => [`/api/users/${u}`, `/api/meetings?userId=${u}`, `/api/users/${u}/stats`, `/api/users/${u}/participations`]),
    ...meetings.flatMap((m) => [`/api/meetings/${m}`, `/api/meetings/${m}/participants`, `/api/meetings/${m}/participants/count`,
      `/api/meetings/${m}/chats`, `/api/recordings/${m}`, `/api/meetings/invite/inv-${m}`]),
  ];
}

/** The cached keys whose value differs from a fresh run of their query. */
export async function staleKeys(app: App, all: Read[]): Promise<{ checked: number; stale: string[] }> {
  const stale: string[] = [];
  let checked = 0;
  for (const read of all) {
    const cached = await app.redis.get(read.key);
    if (cached === null) continue;
    checked++;
    if (cached !== encode(await read.load())) stale.push(read.key); // the same bytes
  }
  return { checked, stale };
}
