#!/usr/bin/env bash
# Builds libqtool (when nvcc is present) and target/qtool.jar.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/java-env.sh
./scripts/build-native.sh
./mvnw -B -ntp -q -DskipTests package
echo "built target/qtool.jar"
