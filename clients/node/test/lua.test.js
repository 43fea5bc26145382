// The package runs the extension's own Lua scripts: the texts it embeds are the files
// lua/*.lua (which scripts/lua2c.sh compiles into the extension), byte for byte.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const { LUA } = require("../dist/cjs/index.js");
const { repo } = require("./helpers.js");

test("every lua/*.lua is embedded byte for byte, and nothing else", () => {
  const dir = path.join(repo, "lua");
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".lua")).sort();
  assert.deepEqual(Object.keys(LUA).sort(), files.map((f) => path.basename(f, ".lua")));
  for (const f of files) {
    const bytes = fs.readFileSync(path.join(dir, f));
    assert.ok(Buffer.from(LUA[path.basename(f, ".lua")], "utf8").equals(bytes), `${f} differs`);
  }
});

test("the extension's compiled-in texts (scripts/lua2c.sh) are the same strings", () => {
  const out = path.join(fs.mkdtempSync(path.join(require("node:os").tmpdir(), "mc-lua-")), "lua.h");
  const files = fs.readdirSync(path.join(repo, "lua")).filter((f) => f.endsWith(".lua")).sort();
  execFileSync("sh", [path.join(repo, "scripts/lua2c.sh"), out, ...files.map((f) => path.join(repo, "lua", f))]);
  const macros = {};
  let name = null;
  for (const line of fs.readFileSync(out, "utf8").split("\n")) {
    const def = /^#define MC_LUA_([A-Z_]+) \\$/.exec(line);
    if (def) { name = def[1].toLowerCase(); macros[name] = ""; continue; }
    const str = /^\t"(.*)"( \\)?$/.exec(line);
    if (name && str) macros[name] += str[1].replace(/\\(.)/g, (_m, c) => (c === "n" ? "\n" : c));
  }
  assert.deepEqual(macros, { ...LUA });
});
