#!/usr/bin/env bash
# Packs what a run on the GPU host needs into .gpu/ (git-ignored; send it with the device tool's carry: [".gpu"]).
# The GPU host has no Java and takes at most 64 MiB per run, so this ships:
#   .gpu/runtime.tgz  a jlink'd Java 25 runtime (java.base, java.xml, java.management, java.logging, jdk.unsupported,
#                     jdk.incubator.vector), whose java always adds the Vector API module (the CPU backend's SIMD)
#   .gpu/qtool.jar    the tool, without the native libraries of other platforms
#   .gpu/test_kernels.xz the native kernel tests (unpacked by run.sh beside the library: LD_LIBRARY_PATH=.gpu)
#   .gpu-bench/benchmarks.jar  the JMH benchmarks (java/bench), carried apart
#   .gpu/libqtool.so.xz  built here by nvcc for sm_90 (QTOOL_CUDA_ARCH overrides), unpacked by run.sh
#   .gpu/run.sh       unpacks the runtime once per machine, then runs `java -jar qtool.jar "$@"`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/java-env.sh
mkdir -p .gpu
./scripts/build-native.sh
[ -f build/native/libqtool.so ] || { echo "gpu-pack: build/native/libqtool.so missing (is nvcc installed?)" >&2; exit 1; }
./mvnw -B -ntp -q -DskipTests package
# The library and the kernel test travel xz-compressed (13 MB of fat binary become ~2.5 MB); run.sh unpacks them.
rm -f .gpu/libqtool.so .gpu/test_kernels
strip --strip-unneeded -o /tmp/libqtool.so build/native/libqtool.so && xz -9 -T2 -c /tmp/libqtool.so > .gpu/libqtool.so.xz
cp target/qtool.jar .gpu/qtool.jar
# JMH apart (the pack is near the 64 MiB a call carries): carry .gpu-bench in a later call of a warm machine
mkdir -p .gpu-bench && cp target/benchmarks.jar .gpu-bench/benchmarks.jar
xz -9 -c build/native/test_kernels > .gpu/test_kernels.xz
# Native libraries of snappy/zstd for other platforms are dead weight on the x86-64 Linux GPU host.
zip -q -d .gpu/qtool.jar 'win/*' 'darwin/*' 'freebsd/*' 'aix/*' 'linux/aarch64/*' 'linux/arm*' 'linux/i386/*' 'linux/loongarch64/*' \
  'linux/mips64/*' 'linux/ppc64*' 'linux/riscv64/*' 'linux/s390x/*' 'org/xerial/snappy/native/[!L]*' \
  'org/xerial/snappy/native/Linux/[!x]*' >/dev/null 2>&1 || true
# The runtime is rebuilt when the JDK or this recipe changes (the recipe is kept beside it).
jre_modules=java.base,java.xml,java.management,java.logging,jdk.unsupported,jdk.incubator.vector
# --add-options takes "--opt=value" only ("--add-modules X" is refused at startup).
jre_options="--enable-native-access=ALL-UNNAMED --sun-misc-unsafe-memory-access=allow --add-modules=jdk.incubator.vector"
jre_recipe="$jre_modules $jre_options"
if [ ! -f .gpu/runtime.tgz ] || [ "$JAVA_HOME/release" -nt .gpu/runtime.tgz ] \
   || [ "$(cat .gpu/runtime.recipe 2>/dev/null)" != "$jre_recipe" ]; then
  rm -rf /tmp/qtool-jre
  jlink --add-modules "$jre_modules" \
    --strip-debug --no-man-pages --no-header-files --compress zip-9 \
    --add-options="$jre_options" --output /tmp/qtool-jre
  tar -C /tmp -czf .gpu/runtime.tgz qtool-jre
  echo "$jre_recipe" > .gpu/runtime.recipe
fi
cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# On the GPU host: qtool with the packed runtime. QTOOL_LIB points the tool at the packed libqtool.so; QTOOL_JAVA_OPTS
# adds JVM options (e.g. -Xmx2g, which overrides the default heap limit).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# A runtime unpacked by an older pack (without the Vector API module) is replaced.
grep -qs jdk.incubator.vector /tmp/qtool-jre/release || { rm -rf /tmp/qtool-jre; tar -C /tmp -xzf "$here/runtime.tgz"; }
for f in libqtool.so test_kernels; do  # shipped xz-compressed; python3's lzma unpacks them wherever xz is missing
  if [ -f "$here/$f.xz" ] && { [ ! -f "$here/$f" ] || [ "$here/$f.xz" -nt "$here/$f" ]; }; then
    python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],'wb'))" "$here/$f.xz" "$here/$f"
    chmod +x "$here/$f"
  fi
done
export QTOOL_LIB="$here/libqtool.so"
exec /tmp/qtool-jre/bin/java -Xmx32g ${QTOOL_JAVA_OPTS:-} -jar "$here/qtool.jar" "$@"
RUN
chmod +x .gpu/run.sh
du -sh .gpu/* | sed 's/^/gpu-pack: /'
