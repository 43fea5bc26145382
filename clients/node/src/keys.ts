// The key grammar, as the extension has it (src/keys.c, src/redis.c): lease keys, the
// reserved lease namespace, key templates (rendering, their SCAN glob, matching a key) and
// the TTL of a family for a value. Pure functions, no I/O.

/** The reserved namespace of lease keys (MC_LEASE_NS). */
export const LEASE_NS = "mc-lease:";
/** The longest key, without the prefix (MC_MAX_KEY_BYTES). */
export const MAX_KEY_BYTES = 1024;

/** A family of meetcache.families, as `meetcache-keys` writes it into the generated module. */
export interface Family {
  name: string;
  template: string;
  ttlSeconds: number | null;
  ttlField?: string | null;
  ttlByValue?: Readonly<Record<string, number>> | null;
}

/**
 * The lease key of a full (prefixed) key K: `mc-lease:u:{K}`, or `mc-lease:t:K` when K
 * already has a hash tag. Both hash to K's Redis Cluster slot.
 */
export function leaseKey(full: string): string {
  const open = full.indexOf("{");
  const close = open < 0 ? -1 : full.indexOf("}", open + 1);
  return close > open + 1 ? `${LEASE_NS}t:${full}` : `${LEASE_NS}u:{${full}}`;
}

/** The SCAN globs of the lease keys (both forms) of every key a glob matches. */
export function leaseGlobs(glob: string): [string, string] {
  return [`${LEASE_NS}u:{${glob}}`, `${LEASE_NS}t:${glob}`];
}

/** Glob text matching s literally (SCAN MATCH). */
export function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, "\\$&");
}

/**
 * True if s (a key, or with glob = true a pattern's literal start) is in the lease
 * namespace.
 */
export function reserved(s: string, glob: boolean): boolean {
  let n = 0;
  for (let i = 0; i < s.length && n < LEASE_NS.length; i++) {
    let c = s[i];
    if (glob && (c === "*" || c === "?" || c === "[")) return false;
    if (glob && c === "\\" && i + 1 < s.length) c = s[++i];
    if (c !== LEASE_NS[n++]) return false;
  }
  return n === LEASE_NS.length;
}

export interface Template {
  source: string;
  /** literal texts around the placeholders: lits.length === args.length + 1 */
  lits: string[];
  args: string[];
  glob: string;
  literalChars: number;
}

/** Parses a key template (`meeting:{meeting_id}:participants`); throws if it is none. */
export function parseTemplate(source: string): Template {
  const lits: string[] = [];
  const args: string[] = [];
  const re = /\{([A-Za-z0-9_]+)\}/g;
  let last = 0;
  for (let m = re.exec(source); m; m = re.exec(source)) {
    lits.push(source.slice(last, m.index));
    args.push(m[1]);
    last = m.index + m[0].length;
  }
  lits.push(source.slice(last));
  if (lits.some((l) => /[{}]/.test(l)) || source === "")
    throw new Error(`invalid key template "${source}"`);
  return {
    source,
    lits,
    args,
    glob: lits.map(globEscape).join("*"),
    literalChars: lits.reduce((n, l) => n + Buffer.byteLength(l), 0),
  };
}

/** A key part: rendered as its text (String(v)), as the extension renders ids. */
export type KeyPart = string | number | bigint;

export function render(t: Template, values: readonly KeyPart[]): string {
  if (values.length !== t.args.length)
    throw new Error(`key template "${t.source}" takes ${t.args.length} arguments, not ${values.length}`);
  let out = t.lits[0];
  for (let i = 0; i < values.length; i++) out += String(values[i]) + t.lits[i + 1];
  return out;
}

/** SCAN-glob match for the globs of templates: '*' any run, '\x' a literal x. */
export function globMatch(glob: string, s: string): boolean {
  let p = 0, i = 0, starP = -1, starI = 0;
  while (i < s.length) {
    if (p < glob.length && glob[p] === "*") {
      starP = ++p;
      starI = i;
      continue;
    }
    if (p < glob.length) {
      let c = glob[p], step = 1;
      if (c === "\\" && p + 1 < glob.length) {
        c = glob[p + 1];
        step = 2;
      }
      if (c === s[i]) {
        p += step;
        i++;
        continue;
      }
    }
    if (starP < 0) return false;
    p = starP;
    i = ++starI;
  }
  while (p < glob.length && glob[p] === "*") p++;
  return p === glob.length;
}

interface Compiled {
  family: Family;
  tmpl: Template;
}

/** The families, compiled once, and the TTL selection of the extension (src/cache.c). */
export class FamilyIndex {
  private readonly compiled: Compiled[];

  constructor(families: readonly Family[]) {
    // the extension reads them ORDER BY name and keeps the first of equally specific ones
    this.compiled = [...families]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((family) => ({ family, tmpl: parseTemplate(family.template) }));
  }

  /** The most specific family whose template matches an unprefixed key. */
  familyFor(key: string): Family | undefined {
    let best: Compiled | undefined;
    for (const c of this.compiled)
      if (globMatch(c.tmpl.glob, key) && (!best || c.tmpl.literalChars > best.tmpl.literalChars))
        best = c;
    return best?.family;
  }
}

/** A family's TTL for a value: ttlByValue[value[ttlField]] for a string field, else ttlSeconds. */
export function familyTtl(f: Family, value: unknown): number | null {
  if (f.ttlField && f.ttlByValue && value !== null && typeof value === "object" && !Array.isArray(value)) {
    const v = (value as Record<string, unknown>)[f.ttlField];
    if (typeof v === "string" && Object.prototype.hasOwnProperty.call(f.ttlByValue, v))
      return f.ttlByValue[v];
  }
  return f.ttlSeconds;
}
