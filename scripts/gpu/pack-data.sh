#!/usr/bin/env bash
# Copies the small shared files the GPU checks read into .gpu/data (git-ignored; ../shared does not travel).
set -euo pipefail
cd "$(dirname "$0")/../.."
S=${QTOOL_SHARED:-../shared}; D=.gpu/data
rm -rf $D; mkdir -p $D/models $D/data $D/tokenizers
cp -r $S/models/stories260K $S/models/stories260K-llama2c $D/models/
rm -f $D/models/stories260K-llama2c/*.bin
mkdir -p $D/models/smollm2-135m && cp $S/models/smollm2-135m/{tokenizer.json,tokenizer_config.json,config.json,reference.json} $D/models/smollm2-135m/
cp -r $S/tokenizers/llama2 $D/tokenizers/
cp $S/data/wiki.test.raw $S/data/wikitext-2-raw-v1_test.parquet $S/data/calibration-mix.parquet $D/data/
# ExLlamaV2's wheel (installed on the GPU host by scripts/gpu/exllamav2-setup.sh)
mkdir -p .gpu-bench && cp $S/peers/exllamav2/*.whl .gpu-bench/  # carried apart, in a later call
mkdir -p .gpu/checks/qtool/backend && cp target/test-classes/qtool/backend/CudaBackendCheck*.class target/test-classes/qtool/backend/RandomGptq*.class target/test-classes/qtool/backend/RandomExl2*.class .gpu/checks/qtool/backend/
(cd target/test-classes && cp --parents qtool/quantize/GptqTestData*.class qtool/quantize/Exl2GptqTest.class qtool/format/exl2/Exl2TensorDump.class ../../.gpu/checks/)
du -sh .gpu/* | sed 's/^/pack-data: /'
