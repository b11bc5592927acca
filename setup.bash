#!/usr/bin/env bash
# Manual set-up without conda: one pip environment, no CUDA submodules to build.
# gsplat compiles its CUDA kernels on first use on a CUDA machine (~90 s, cached in ~/.cache/torch_extensions).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -e ".[dev]"
python -c "import torch, gsplat; print('torch', torch.__version__, 'CUDA' if torch.cuda.is_available() else 'CPU only', '| gsplat', gsplat.__version__)"
