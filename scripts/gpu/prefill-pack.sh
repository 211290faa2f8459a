#!/usr/bin/env bash
# Packs this checkout's build for scripts/gpu/prefill-bench.sh into DEST (default .gpu/prefill, git-ignored):
# libqtool.so, test_kernels, qtool.jar (stripped like gpu-pack.sh), the compiled Java checks, the bench scripts.
# The device tool sends the checkout it was started in; from another worktree pass that checkout's .gpu/prefill as
# DEST and carry [".gpu/runtime.tgz", ".gpu/data", ".gpu/prefill"] (runtime.tgz from scripts/gpu-pack.sh, data from
# scripts/gpu/pack-data.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${1:-.gpu/prefill}"
mkdir -p "$dest"; dest="$(cd "$dest" && pwd)"
source scripts/java-env.sh
./scripts/build-native.sh >/dev/null
./mvnw -B -ntp -q -o -DskipTests package
rm -rf "$dest"; mkdir -p "$dest/checks"
cp build/native/libqtool.so build/native/test_kernels "$dest/"
cp target/qtool.jar "$dest/qtool.jar"
zip -q -d "$dest/qtool.jar" 'win/*' 'darwin/*' 'freebsd/*' 'aix/*' 'linux/aarch64/*' 'linux/arm*' 'linux/i386/*' 'linux/loongarch64/*' \
  'linux/mips64/*' 'linux/ppc64*' 'linux/riscv64/*' 'linux/s390x/*' 'org/xerial/snappy/native/[!L]*' \
  'org/xerial/snappy/native/Linux/[!x]*' >/dev/null 2>&1 || true
(cd target/test-classes && cp --parents qtool/backend/CudaBackendCheck*.class qtool/backend/RandomGptq*.class qtool/backend/RandomExl2*.class qtool/model/PrefillTiming*.class "$dest/checks/")
cp scripts/gpu/prefill-bench.sh scripts/gpu/prefill_profile.py scripts/gpu/reference.py "$dest/"
du -sh "$dest"/* | sed 's/^/prefill-pack: /'
