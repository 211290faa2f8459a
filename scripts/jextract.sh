#!/usr/bin/env bash
# Regenerates the Java bindings bindings/qtool/ffi/ (package qtool.ffi, class qtool_h) from
# native/include/qtool.h with jextract (on PATH, or $JEXTRACT). The generated code names no library
# (no -l): qtool.backend.NativeLibrary finds libqtool.so and System.load()s it before the first call.
# Only qtool.h's own declarations are generated: jextract --dump-includes lists every symbol the header
# pulls in (libc's too), this keeps the ones declared in qtool.h, and bindings/qtool-includes.txt records
# that list (commit it with the bindings; a changed list shows in review).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jextract="${JEXTRACT:-$(command -v jextract || true)}"
if [ -z "$jextract" ]; then
  echo "jextract.sh: jextract not found on PATH (set JEXTRACT); bindings/ left as committed" >&2
  exit 1
fi

header="$root/native/include/qtool.h"
includes="$root/bindings/qtool-includes.txt"
mkdir -p "$root/bindings"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

"$jextract" --dump-includes "$scratch/all.txt" "$header" >/dev/null 2>&1
# Lines look like: --include-function qt_malloc   # header: /path/native/include/qtool.h
grep -E "# header: .*/native/include/qtool\.h$" "$scratch/all.txt" | sed -E 's/[[:space:]]+#.*$//' | sort > "$includes"
# A typedef'd struct needs --include-typedef too (jextract lists only the struct).
grep -E '^--include-struct ' "$includes" | sed 's/^--include-struct /--include-typedef /' >> "$includes"
sort -u -o "$includes" "$includes"

rm -rf "$root/bindings/qtool/ffi"
"$jextract" --target-package qtool.ffi --header-class-name qtool_h --output "$root/bindings" @"$includes" "$header"
echo "jextract.sh: $(find "$root/bindings/qtool/ffi" -name '*.java' | wc -l) files in bindings/qtool/ffi from $(wc -l < "$includes") symbols"
