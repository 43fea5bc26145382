// The seed's routes as a small node:http server. Reads go through cache.getOrSet (reads.ts);
// writes are plain Prisma calls, with no cache code at all: meetcache's triggers delete the
// affected keys (and cancel their leases) after each commit.
import * as http from "node:http";
import type { Cache } from "meetcache";
import type { PrismaClient } from "./generated/prisma/client.js";
import { Read, reads } from "./reads.js";

type Handler = (p: Record<string, string>, body: any) => Promise<unknown>;

export function createApp(prisma: PrismaClient, cache: Cache): http.Server {
  const r = reads(prisma);
  const serve = (read: Read) => cache.getOrSet(read.key, read.load);
  const routes: [string, RegExp, Handler][] = [];
  const route = (method: string, path: string, h: Handler) =>
    routes.push([method, new RegExp("^" + path.replace(/:(\w+)/g, "(?<$1>[^/]+)") + "$"), h]);

  // reads (the seeds' GET routes)
  route("GET", "/api/meetings", (_p, q) => serve(r.userMeetings(q.userId)));
  route("GET", "/api/meetings/live", () => serve(r.liveMeetings()));
  route("GET", "/api/meetings/scheduled", () => serve(r.scheduledMeetings()));
  route("GET", "/api/meetings/invite/:code", (p) => serve(r.meetingByInvite(p.code)));
  route("GET", "/api/meetings/:id", (p) => serve(r.meeting(p.id)));
  route("GET", "/api/meetings/:id/participants", (p) => serve(r.participants(p.id)));
  route("GET", "/api/meetings/:id/participants/count", (p) => serve(r.participantCount(p.id)));
  route("GET", "/api/meetings/:id/chats", (p) => serve(r.recentChats(p.id)));
  route("GET", "/api/recordings/:meetingId", (p) => serve(r.recording(p.meetingId)));
  route("GET", "/api/users/:id", (p) => serve(r.user(p.id)));
  route("GET", "/api/users/:id/stats", (p) => serve(r.userStats(p.id)));
  route("GET", "/api/users/:id/participations", (p) => serve(r.userParticipations(p.id)));

  // writes: Prisma only
  route("POST", "/api/meetings", (_p, b) => prisma.meeting.create({ data: b }));
  route("PATCH", "/api/meetings/:id", (p, b) => prisma.meeting.update({ where: { id: p.id }, data: b }));
  route("DELETE", "/api/meetings/:id", (p) => prisma.meeting.delete({ where: { id: p.id } }));
  route("POST", "/api/meetings/:id/join", (p, b) =>
    prisma.participant.create({ data: { id: b.id, meetingId: p.id, userId: b.userId } }));
  route("POST", "/api/meetings/:id/leave", (p, b) =>
    prisma.participant.updateMany({ where: { meetingId: p.id, userId: b.userId, leftAt: null }, data: { leftAt: new Date() } }));
  route("POST", "/api/meetings/:id/chats", (p, b) =>
    prisma.chatMessage.create({ data: { id: b.id, meetingId: p.id, userId: b.userId, message: b.message } }));
  route("PUT", "/api/recordings/:meetingId", (p, b) => {
    const data = { ...b, fileSizeBytes: b.fileSizeBytes == null ? b.fileSizeBytes : BigInt(b.fileSizeBytes) };
    return prisma.recording.upsert({ where: { meetingId: p.meetingId }, create: { id: `r-${p.meetingId}`, ...data, meetingId: p.meetingId }, update: data });
  });
  route("PATCH", "/api/users/:id", (p, b) => prisma.user.update({ where: { id: p.id }, data: b }));

  return http.createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    let body: any = Object.fromEntries(url.searchParams);
    const send = (status: number, payload: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(payload, (_k, v) => (typeof v === "bigint" ? Number(v) : v)));
    };
    try {
      if (req.method !== "GET") {
        let text = "";
        for await (const chunk of req) text += chunk;
        if (text) body = JSON.parse(text);
      }
      for (const [method, re, h] of routes) {
        const m = req.method === method ? re.exec(url.pathname) : null;
        if (m) return send(200, { data: await h(m.groups ?? {}, body) });
      }
      send(404, { error: "not found" });
    } catch (err) {
      send(500, { error: (err as Error).message });
    }
  });
}
