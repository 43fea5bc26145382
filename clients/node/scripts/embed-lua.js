// Writes src/lua.ts from the repository's lua/*.lua, the one text of each script that the
// extension (scripts/lua2c.sh) compiles in too: `npm run lua` (part of `npm run build`).
"use strict";
const fs = require("node:fs");
const path = require("node:path");

const dir = path.resolve(__dirname, "../../../lua");
const names = fs.readdirSync(dir).filter((f) => f.endsWith(".lua")).sort();
if (names.length === 0) throw new Error(`no Lua scripts in ${dir}`);
let out = "// generated from lua/NAME.lua by scripts/embed-lua.js: do not edit\n";
out += "export const LUA = {\n";
for (const f of names) {
  const text = fs.readFileSync(path.join(dir, f), "utf8");
  out += `  ${path.basename(f, ".lua")}: ${JSON.stringify(text)},\n`;
}
out += "} as const;\n";
fs.writeFileSync(path.resolve(__dirname, "../src/lua.ts"), out);
