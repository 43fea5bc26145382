// Every cached read of the seeds: its key and its Prisma query. The routes serve them with
// cache.getOrSet; the tests compare what is cached with a fresh run of the same query.
import type { PrismaClient } from "./generated/prisma/client.js";
import { cacheKeys } from "./cache-keys.js";

export interface Read {
  key: string;
  load: () => Promise<unknown>;
}

const userCard = { select: { id: true, name: true, image: true } } as const;

export function reads(prisma: PrismaClient) {
  return {
    user: (id: string): Read => ({
      key: cacheKeys.user(id),
      load: () => prisma.user.findUnique({ where: { id }, select: { id: true, name: true, email: true, image: true, createdAt: true } }),
    }),
    userMeetings: (hostId: string): Read => ({
      key: cacheKeys.userMeetings(hostId),
      load: () => prisma.meeting.findMany({
        where: { hostId },
        select: { id: true, title: true, status: true, inviteCode: true, scheduledAt: true, host: userCard },
        orderBy: [{ createdAt: "desc" }, { id: "asc" }],
      }),
    }),
    userStats: (hostId: string): Read => ({
      key: cacheKeys.userMeetingCount(hostId),
      load: async () => {
        const [total, live, scheduled, ended] = await Promise.all([
          prisma.meeting.count({ where: { hostId } }),
          prisma.meeting.count({ where: { hostId, status: "LIVE" } }),
          prisma.meeting.count({ where: { hostId, status: "SCHEDULED" } }),
          prisma.meeting.count({ where: { hostId, status: "ENDED" } }),
        ]);
        return { total, live, scheduled, ended };
      },
    }),
    userParticipations: (userId: string): Read => ({
      key: cacheKeys.userParticipations(userId),
      load: () => prisma.participant.findMany({
        where: { userId },
        select: { id: true, joinedAt: true, leftAt: true, meeting: { select: { id: true, title: true, status: true } } },
        orderBy: [{ joinedAt: "asc" }, { id: "asc" }],
      }),
    }),
    meeting: (id: string): Read => ({
      key: cacheKeys.meeting(id),
      load: () => prisma.meeting.findUnique({
        where: { id },
        include: { host: userCard, _count: { select: { participants: true, chatMessages: true } } },
      }),
    }),
    meetingByInvite: (inviteCode: string): Read => ({
      key: cacheKeys.meetingByInvite(inviteCode),
      load: () => prisma.meeting.findUnique({
        where: { inviteCode },
        select: { id: true, title: true, status: true, scheduledAt: true, host: userCard },
      }),
    }),
    liveMeetings: (): Read => ({
      key: cacheKeys.liveMeetings(),
      load: () => prisma.meeting.findMany({
        where: { status: "LIVE" },
        select: { id: true, title: true, startedAt: true, host: { select: { id: true, name: true } }, _count: { select: { participants: true } } },
        orderBy: [{ startedAt: "desc" }, { id: "asc" }],
        take: 20,
      }),
    }),
    scheduledMeetings: (): Read => ({
      key: cacheKeys.scheduledMeetings(),
      load: () => prisma.meeting.findMany({
        where: { status: "SCHEDULED" },
        select: { id: true, title: true, scheduledAt: true, host: { select: { id: true, name: true } } },
        orderBy: [{ scheduledAt: "asc" }, { id: "asc" }],
      }),
    }),
    participants: (meetingId: string): Read => ({
      key: cacheKeys.meetingParticipants(meetingId),
      load: () => prisma.participant.findMany({
        where: { meetingId },
        include: { user: { select: { id: true, name: true, email: true, image: true } } },
        orderBy: [{ joinedAt: "asc" }, { id: "asc" }],
      }),
    }),
    participantCount: (meetingId: string): Read => ({
      key: cacheKeys.meetingParticipantCount(meetingId),
      load: () => prisma.participant.count({ where: { meetingId, leftAt: null } }),
    }),
    recentChats: (meetingId: string): Read => ({
      key: cacheKeys.recentChats(meetingId),
      load: () => prisma.chatMessage.findMany({
        where: { meetingId },
        include: { user: userCard },
        orderBy: [{ sentAt: "desc" }, { id: "desc" }],
        take: 50,
      }),
    }),
    recording: (meetingId: string): Read => ({
      key: cacheKeys.meetingRecording(meetingId),
      load: () => prisma.recording.findUnique({
        where: { meetingId },
        select: { id: true, status: true, fileUrl: true, durationSeconds: true, fileSizeBytes: true, createdAt: true },
      }),
    }),
  };
}
export type Reads = ReturnType<typeof reads>;
