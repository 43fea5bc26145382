#!/bin/sh
# prisma generate, offline: the engines' postinstall could not download a schema-engine
# binary (it is not on npm), and generate only wants the variable to name an existing file;
# it does not run it. See /work/shared/spec/design-notes.md, "Application side".
set -eu
cd "$(dirname "$0")/.."
export CHECKPOINT_DISABLE=1 PRISMA_HIDE_UPDATE_MESSAGE=1
PRISMA_SCHEMA_ENGINE_BINARY=${PRISMA_SCHEMA_ENGINE_BINARY:-$PWD/prisma/schema.prisma} \
	exec npx --no-install prisma generate
