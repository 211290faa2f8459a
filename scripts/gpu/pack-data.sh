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
cp $S/data/wiki.test.raw $D/data/
# ExLlamaV2's wheel for checks-gptq-exllama.sh (1.5 MB)
if [ -f $S/peers/exllamav2/exllamav2-0.3.2-py3-none-any.whl ]; then mkdir -p .gpu/peers && cp $S/peers/exllamav2/exllamav2-0.3.2-py3-none-any.whl .gpu/peers/; fi
mkdir -p .gpu/checks/qtool/backend && cp target/test-classes/qtool/backend/CudaBackendCheck*.class .gpu/checks/qtool/backend/
du -sh .gpu/* | sed 's/^/pack-data: /'
