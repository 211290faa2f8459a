#!/usr/bin/env bash
# The test command: builds the Java code and runs every unit test (CPU backend; GPU checks run on the GPU host
# through scripts/gpu-check.sh). Tests that need ../shared skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/java-env.sh
exec ./mvnw -B -ntp test "$@"
