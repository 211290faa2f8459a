# Sourced by the other scripts: exports JAVA_HOME pointing at a JDK of release 25 or newer.
# The machine's default java may be older (17 here); Temurin 25 lives under /usr/lib/jvm.
java_release() { "$1/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p'; }
qtool_find_jdk() {
  local candidate
  for candidate in "${JAVA_HOME:-}" /usr/lib/jvm/temurin-25* /usr/lib/jvm/*25* /usr/lib/jvm/* /opt/java/*; do
    [ -n "$candidate" ] && [ -x "$candidate/bin/javac" ] || continue
    if [ "$(java_release "$candidate")" -ge 25 ] 2>/dev/null; then echo "$candidate"; return 0; fi
  done
  return 1
}
if JAVA_HOME=$(qtool_find_jdk); then
  export JAVA_HOME PATH="$JAVA_HOME/bin:$PATH"
else
  echo "qtool: no JDK 25 or newer found (set JAVA_HOME)" >&2
  return 1 2>/dev/null || exit 1
fi
