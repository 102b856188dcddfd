#!/usr/bin/env bash
# GPU check of 8-bit and 4-bit bases (issue 6). Run from the repository root on a machine with an
# NVIDIA GPU and a CUDA build of torch already installed:
#
#     bash benchmarks/gpu_check.sh [--model FOLDER_OR_HUB_ID] [--steps 40]
#
# 1. installs peftkit (editable, keeping the CUDA torch that is there) and whatever it lacks,
# 2. runs the quantization tests, the GPU-marked ones included, and the `peftkit serve` tests
#    (their servers put the base and its adapters on the GPU),
#    and the ONNX export tests (with onnxruntime-gpu, the ONNX Runtime sessions of `peftkit
#    predict` / `eval` run on CUDA; the export's own check stays on the CPU),
# 3. trains LoRA for a few steps on a 16-bit, an 8-bit and a 4-bit (NF4) base, merges each run
#    (the base reloaded in full precision) and prints memory and throughput side by side
#    (benchmarks/gpu_check.py; results also in $OUT/summary.json).
# Offline it uses a random-init Llama shaped like SmolLM2-135M; pass --model for real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp}/peftkit_gpu_check"

python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device: install a CUDA build of torch first")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

# --no-deps first: a plain install could replace the CUDA torch with another build. Then install
# only what is missing (needs the package index; skipped when everything is already there).
pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .
missing=$(python - <<'PY'
import importlib.util as u
need = {"transformers": "transformers>=5,<6", "peft": "peft>=0.17", "bitsandbytes": "bitsandbytes>=0.45",
        "accelerate": "accelerate>=1.0", "datasets": "datasets>=3", "seqeval": "seqeval>=1.2",
        "sklearn": "scikit-learn>=1.3", "click": "click>=8.1", "yaml": "pyyaml>=6", "pytest": "pytest>=8",
        "safetensors": "safetensors>=0.4", "evaluate": "evaluate>=0.4", "matplotlib": "matplotlib>=3.7",
        "pandas": "pandas>=2", "tokenizers": "tokenizers", "fastapi": "fastapi>=0.110",
        "uvicorn": "uvicorn>=0.29", "openai": "openai>=3.50", "httpx2": "httpx2>=2",
        "onnx": "onnx>=1.23", "onnxscript": "onnxscript>=0.7", "onnxruntime": "onnxruntime-gpu>=1.31"}
print(" ".join(f"'{spec}'" for mod, spec in need.items() if u.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
    echo "installing: $missing"
    eval pip install -q "$missing"
fi
python -c "import bitsandbytes as b, transformers as t, peft as p; print('bitsandbytes', b.__version__, '| transformers', t.__version__, '| peft', p.__version__)"

echo "== tests (quantization, GPU-marked included)"
python -m pytest -q tests/test_quantization.py -p no:cacheprovider

echo "== peftkit serve on CUDA (the tests' servers run --device auto: the model on the GPU)"
python -m pytest -q tests/test_serve.py -p no:cacheprovider

echo "== ONNX export and ONNX Runtime (CUDAExecutionProvider listed: the sessions run on the GPU)"
python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python -m pytest -q tests/test_onnx.py -p no:cacheprovider

echo "== LoRA on 16-bit / 8-bit / 4-bit bases"
python benchmarks/gpu_check.py --out "$OUT_DIR" "$@"
