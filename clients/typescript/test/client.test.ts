// The TypeScript client against the real mesh (two replicas of each service): the seed walk-through, typed
// errors, and a watch that resumes by itself across a replica's SIGTERM and restart.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  InvalidArgument, InvalidResumeToken, ProfileClient, ProfileExists, ProfileNotFound, ReportingClient,
  type ProfileEvent,
} from "../src/index.js";
import { startMesh, type Mesh } from "./mesh.js";

let mesh: Mesh;
const run = `ts${Date.now().toString(36)}`;

before(async () => { mesh = await startMesh(); });
after(async () => { await mesh?.stop(); });

async function eventually<T>(probe: () => Promise<T | undefined>, ms = 20000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("the seed walk-through through the client, with typed errors", async () => {
  const profiles = new ProfileClient(mesh.profileTarget);
  const reporting = new ReportingClient(mesh.reportingTarget);
  const ana = `${run}-ana`;
  await profiles.create(ana, { email: "ana@example.com", username: "Ana" });
  await assert.rejects(profiles.create(ana, { email: "x" }), (e) => e instanceof ProfileExists && e.reason === "PROFILE_EXISTS");
  assert.deepEqual(await profiles.get(ana), { user: ana, fields: { email: "ana@example.com", username: "Ana" } });
  await profiles.update(ana, { username: "Ana2" });
  assert.equal((await profiles.get(ana)).fields.username, "Ana2");
  const many = await profiles.getMany([ana, `${run}-nobody`]);
  assert.equal(many[0].profile?.user, ana);
  assert.ok(many[1].error instanceof ProfileNotFound && many[1].error.reason === "PROFILE_NOT_FOUND");
  await eventually(async () => ((await reporting.stats(ana)) === 3 ? true : undefined));
  // The top list follows the counts by a copy into its index (docs/architecture.md, "The top list's index").
  await eventually(async () => ((await reporting.top(1000)).some((s) => s.user === ana && s.score === 3) ? true : undefined));
  assert.ok((await reporting.totals()).create >= 1);
  await assert.rejects(reporting.top(0), (e) => e instanceof InvalidArgument && e.field === "limit");
  await profiles.delete(ana);
  assert.equal(await profiles.ensureDeleted(ana), false);
  await assert.rejects(profiles.get(ana), (e) => e instanceof ProfileNotFound && e.message === `Profile not found for ${ana}`);
  const refused = profiles.watchEvents({ resumeToken: "not-a-token" })[Symbol.asyncIterator]();
  await assert.rejects(refused.next(), (e) => e instanceof InvalidResumeToken && e.field === "resume_token");
});

test("watchEvents resumes by itself across a SIGTERM and restart of each replica", async () => {
  const profiles = new ProfileClient(mesh.profileTarget);
  const users = Array.from({ length: 10 }, (_, i) => `${run}-w${i}`);
  const watch = profiles.watchEvents({ users });
  const received: ProfileEvent[] = [];
  const consuming = (async () => { for await (const event of watch) received.push(event); })().catch(() => {});
  await eventually(async () => (watch.resumeToken ? true : undefined));
  let writing = true;
  let written = 0;
  const writer = (async () => {
    for (let n = 0; writing; n++) {
      if (await profiles.ensureCreated(users[n % users.length], { n: String(n) })) written++;
      if (await profiles.ensureDeleted(users[n % users.length])) written++;
    }
  })();
  for (const index of [0, 1]) {  // whichever replica serves the stream, one of these ends it
    const name = index === 0 ? "profile_svc" : "profile_svc-2";
    assert.deepEqual(await mesh.command(`stop ${name} SIGTERM`), { ok: true, code: 0 });
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await mesh.command(`start profile_svc ${index}`)).ok, true);
  }
  await new Promise((r) => setTimeout(r, 500));
  writing = false;
  await writer;
  await eventually(async () => (received.length >= written ? true : undefined));
  await new Promise((r) => setTimeout(r, 1000));  // a duplicate would arrive by now
  const ids = received.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, "an event arrived twice");
  assert.ok(ids.length >= written, `received ${ids.length} of ${written} confirmed changes`);
  // Each user's events alternate create, delete, ... in order: a missed or repeated one breaks it.
  for (const user of users) {
    const types = received.filter((e) => e.user === user).map((e) => e.type);
    types.forEach((type, i) => assert.equal(type, i % 2 === 0 ? "create" : "delete", `${user}: ${types}`));
  }
  assert.ok(watch.reconnects >= 1, "the stream was never ended");
  watch.close();
  await consuming;
  console.log(`watchEvents: ${ids.length} changes once each across ${watch.reconnects} reconnects`);
});
