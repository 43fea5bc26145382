#!/bin/sh
# Writes a C header that defines each Lua script of lua/ as a string macro, so that the
# extension and the clients (clients/) share one text of every script:
#   lua/lease_get.lua  ->  #define MC_LUA_LEASE_GET "...\n"
# usage: scripts/lua2c.sh OUT.h lua/*.lua
set -eu
out=$1
shift
tmp=$out.tmp
{
	echo "/* generated from the files lua/NAME.lua by scripts/lua2c.sh: do not edit */"
	for f in "$@"; do
		name=$(basename "$f" .lua | tr 'a-z' 'A-Z')
		echo "#define MC_LUA_$name \\"
		sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/.*/	"&\\n" \\/' "$f"
		echo "	\"\""
	done
} >"$tmp"
mv "$tmp" "$out"
