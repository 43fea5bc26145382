// dist/esm holds ES modules: mark the directory so that Node reads its .js files as such.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
fs.writeFileSync(path.resolve(__dirname, "../dist/esm/package.json"), '{ "type": "module" }\n');
