// Values are JSON text, stored compact, exactly as the extension stores and reads them
// (src/cache.c: "as JSON.stringify writes it").
//   Date    -> its toJSON(): an ISO 8601 string in UTC ("2024-01-02T03:04:05.678Z"); read back
//              as that string (PostgreSQL's own timestamps in JSON have no "Z" or an offset:
//              `new Date(s)` reads both).
//   BigInt  -> a JSON number with every digit ({"n":9007199254740993}), the way PostgreSQL
//              writes a bigint in JSON; read back as a JS number (exact up to 2^53 - 1).
//   undefined (a loader that returns nothing) -> null.
import { randomBytes } from "node:crypto";

const BIG = `\u0000meetcache-bigint-${randomBytes(8).toString("hex")}:`;
// what JSON.stringify writes for the string BIG + digits
const BIG_RE = new RegExp(`"${JSON.stringify(BIG).slice(1, -1).replace(/\\/g, "\\\\")}(-?\\d+)"`, "g");

function replacer(this: unknown, _key: string, value: unknown): unknown {
  return typeof value === "bigint" ? BIG + value.toString() : value;
}

/** The JSON text of a value, as the cache stores it. */
export function encode(value: unknown): string {
  const s = JSON.stringify(value === undefined ? null : value, replacer);
  if (s === undefined) return "null"; // a function or a symbol
  return s.replace(BIG_RE, "$1");
}

/** The value of a cached JSON text. */
export function decode<T = unknown>(text: string): T {
  return JSON.parse(text) as T;
}
