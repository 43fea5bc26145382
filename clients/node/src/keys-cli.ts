#!/usr/bin/env node
// meetcache-keys: writes the typed cacheKeys module from a database's meetcache.families,
// or with --check fails (exit 1) when a module written before no longer matches them.
//   meetcache-keys --database-url URL [--out FILE] [--check] [--import-from meetcache]
// The URL defaults to $DATABASE_URL; without --out the module goes to stdout. Needs the
// package pg (an optional peer dependency of meetcache).
import * as fs from "node:fs";
import { FAMILIES_QUERY, FamilyRow, generateModule } from "./generate.js";

const USAGE = "usage: meetcache-keys [--database-url URL] [--out FILE] [--check] [--import-from MODULE]";

function parseArgs(argv: string[]): { url?: string; out?: string; check: boolean; importFrom: string } {
  const o = { url: process.env.DATABASE_URL, out: undefined as string | undefined, check: false, importFrom: "meetcache" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (a === "--database-url") o.url = value();
    else if (a === "--out") o.out = value();
    else if (a === "--import-from") o.importFrom = value();
    else if (a === "--check") o.check = true;
    else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  return o;
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  if (!o.url) throw new Error(`no --database-url and no DATABASE_URL\n${USAGE}`);
  if (o.check && !o.out) throw new Error(`--check needs --out FILE\n${USAGE}`);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { Client } = require("pg") as typeof import("pg");
  const db = new Client({ connectionString: o.url });
  await db.connect();
  let text: string;
  try {
    text = generateModule((await db.query<FamilyRow>(FAMILIES_QUERY)).rows, o.importFrom);
  } finally {
    await db.end();
  }
  if (o.check) {
    const old = fs.existsSync(o.out as string) ? fs.readFileSync(o.out as string, "utf8") : null;
    if (old === text) return 0;
    process.stderr.write(`meetcache-keys: ${o.out} ${old === null ? "does not exist" : "no longer matches meetcache.families"}; regenerate it:\n` +
      `  npx meetcache-keys --database-url URL --out ${o.out}\n`);
    return 1;
  }
  if (o.out) fs.writeFileSync(o.out, text);
  else process.stdout.write(text);
  return 0;
}

main().then((rc) => { process.exitCode = rc; }, (err: Error) => {
  process.stderr.write(`meetcache-keys: ${err.message}\n`);
  process.exitCode = 2;
});
