// The key grammar, the value encoding and the generated module, without servers.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const { leaseKey, reserved, parseTemplate, render, globMatch, FamilyIndex, familyTtl } = require("../dist/cjs/keys.js");
const { encode, decode } = require("../dist/cjs/codec.js");
const { generateModule } = require("../dist/cjs/generate.js");

test("lease keys: the extension's two forms, in the key's cluster slot", () => {
  assert.equal(leaseKey("meeting:m1"), "mc-lease:u:{meeting:m1}");
  assert.equal(leaseKey("app:{t}:x"), "mc-lease:t:app:{t}:x");
  assert.equal(leaseKey("a{}b"), "mc-lease:u:{a{}b}"); // an empty tag is no tag
  assert.equal(leaseKey("a{b"), "mc-lease:u:{a{b}");
});

test("reserved namespace, as a key and as a pattern's literal start", () => {
  assert.equal(reserved("mc-lease:x", false), true);
  assert.equal(reserved("mc-lease", false), false);
  assert.equal(reserved("mc-lease:*", true), true);
  assert.equal(reserved("mc-*", true), false);
  assert.equal(reserved("mc\\-lease:x*", true), true);
});

test("templates: render, glob, most specific family, TTL by value", () => {
  const t = parseTemplate("meeting:{meeting_id}:participants");
  assert.equal(render(t, ["m1"]), "meeting:m1:participants");
  assert.equal(render(parseTemplate("a*{x}"), [5n]), "a*5");
  assert.equal(parseTemplate("a*{x}").glob, "a\\**");
  assert.throws(() => render(t, []), /takes 1 arguments/);
  assert.throws(() => parseTemplate("a{b"), /invalid key template/);
  assert.equal(globMatch(t.glob, "meeting:m1:participants"), true);
  assert.equal(globMatch(t.glob, "meeting:m1"), false);
  const fams = [
    { name: "meeting", template: "meeting:{id}", ttlSeconds: 600 },
    { name: "meeting_recording", template: "meeting:{meeting_id}:recording", ttlSeconds: 600,
      ttlField: "status", ttlByValue: { PROCESSING: 30 } },
  ];
  const ix = new FamilyIndex(fams);
  assert.equal(ix.familyFor("meeting:m1:recording").name, "meeting_recording");
  assert.equal(ix.familyFor("meeting:m1").name, "meeting");
  assert.equal(ix.familyFor("user:u1"), undefined);
  assert.equal(familyTtl(fams[1], { status: "PROCESSING" }), 30);
  assert.equal(familyTtl(fams[1], { status: "READY" }), 600);
  assert.equal(familyTtl(fams[1], null), 600);
  assert.equal(familyTtl(fams[1], [{ status: "PROCESSING" }]), 600);
});

test("encoding: compact JSON, Date as ISO string, BigInt as an exact JSON number", () => {
  assert.equal(encode({ a: 1, b: [1, 2] }), '{"a":1,"b":[1,2]}');
  assert.equal(encode(undefined), "null");
  assert.equal(encode(new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678))), '"2024-01-02T03:04:05.678Z"');
  assert.equal(encode({ n: 9007199254740993n, m: [-1n], s: "9n" }), '{"n":9007199254740993,"m":[-1],"s":"9n"}');
  assert.equal(encode(12n), "12");
  // a string that looks like the marker stays a string
  assert.equal(decode(encode({ s: "\u0000meetcache-bigint-x:1" })).s, "\u0000meetcache-bigint-x:1");
  assert.deepEqual(decode('{"d":"2024-01-02T03:04:05.678"}'), { d: "2024-01-02T03:04:05.678" });
});

test("generated module: one typed function per family, and the families", () => {
  const text = generateModule([
    { name: "live_meetings", template: "meetings:live", ttl_seconds: 60, ttl_field: null, ttl_by_value: null },
    { name: "meeting_by_invite", template: "meeting:invite:{invite_code}", ttl_seconds: 300, ttl_field: null, ttl_by_value: null },
    { name: "meeting_recording", template: "meeting:{meeting_id}:recording", ttl_seconds: 600, ttl_field: "status", ttl_by_value: { PROCESSING: 30 } },
  ]);
  assert.match(text, /liveMeetings: \(\): string => "meetings:live",/);
  assert.match(text, /meetingByInvite: \(inviteCode: KeyPart\): string => "meeting:invite:" \+ String\(inviteCode\),/);
  assert.match(text, /meetingRecording: \(meetingId: KeyPart\): string => "meeting:" \+ String\(meetingId\) \+ ":recording",/);
  assert.match(text, /"ttlByValue":\{"PROCESSING":30\}/);
  assert.match(text, /^import type \{ Family, KeyPart \} from "meetcache";$/m);
});
