#!/usr/bin/env bash
# The GPU machine's check of video_summary, in one bounded run (about 8 minutes at most):
#
#   1. what the machine has: nvidia-smi, torch/CUDA, PyAV and whether NVDEC opens;
#   2. python3 -m pytest -q tests/algorithms (the CUDA tests run where CUDA is present);
#   3. benchmarks/algorithm.py --device cuda at 1280x720 and 1920x1080, 1800 frames each
#      (analysis and decoder on auto: torch on the GPU, NVDEC when it opens);
#   4. decoding alone at 1920x1080: PyAV software against PyAV hwaccel cuda (goal >= 2x);
#   5. if time is left, at 1920x1080: the torch analysis with the software decoder (what NVDEC
#      adds to run()), the previous CUDA path (OpenCV analysis, software decoder) on the same
#      machine, and decoding alone of an H.264 copy.
#
# Run from the repository root. Everything lands under "${OUT:-/tmp/gpu_check}": one .txt per
# step and summary.txt (each step's exit status and the benchmarks' JSON lines), which is also
# printed at the end. When `import av` fails and the folder "${WHEELS:-wheels}" exists, PyAV is
# installed from it first (pip --no-index). Each step runs under `timeout`, cut to the time
# left of BUDGET_S (default 480 s); a step that would get less than its minimum is skipped.
set -u

OUT="${OUT:-/tmp/gpu_check}"
WHEELS="${WHEELS:-wheels}"
BUDGET_S="${BUDGET_S:-480}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
cd "$(dirname "$0")/.." || exit 1
export PYTHON

# step NAME MIN_S MAX_S COMMAND...: run COMMAND with output in $OUT/NAME.txt under a timeout
# of at most MAX_S seconds and what is left of the budget; skip it when less than MIN_S is left.
step() {
    local name=$1 min_s=$2 max_s=$3
    shift 3
    local left=$((BUDGET_S - SECONDS))
    if ((left < min_s)); then
        echo "$name: skipped (${left}s left of ${BUDGET_S}s)" | tee -a "$SUMMARY"
        return
    fi
    local limit=$((left < max_s ? left : max_s)) started=$SECONDS rc
    echo "== $name (limit ${limit}s): $*"
    timeout -k 5 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    tail -n 4 "$OUT/$name.txt"
    echo "$name: rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)') in $((SECONDS - started))s" | tee -a "$SUMMARY"
    grep -h '^{' "$OUT/$name.txt" | tail -n 1 >> "$SUMMARY"
}

if ! "$PYTHON" -c "import av" 2>/dev/null && [ -d "$WHEELS" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" av > "$OUT/pip.txt" 2>&1
    echo "pip install av from $WHEELS: rc=$?" | tee -a "$SUMMARY"
fi

probe() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nproc
    "$PYTHON" - <<'EOF'
import json
import torch
report = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
try:
    import av
    from av.codec.hwaccel import HWAccel, hwdevices_available
    import cv2
    report.update(av=av.__version__, opencv=cv2.__version__, hwdevices=hwdevices_available())
    for codec in ("h264", "mpeg4", "hevc"):
        report[f"{codec}_cuda_config"] = any(c.device_type.name == "cuda" for c in av.codec.Codec(codec, "r").hardware_configs)
    HWAccel("cuda", allow_software_fallback=False).create(av.codec.Codec("h264", "r"))
    report["cuda_device_for_ffmpeg"] = "ok"
except Exception as exc:  # the probe reports whatever fails
    report["probe_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
EOF
}
export -f probe

step env 5 30 bash -c probe
step pytest 60 200 "$PYTHON" -m pytest -q -p no:cacheprovider tests/algorithms
step bench_720p 40 100 "$PYTHON" benchmarks/algorithm.py --device cuda --width 1280 --height 720 --frames 1800
step bench_1080p 50 130 "$PYTHON" benchmarks/algorithm.py --device cuda --width 1920 --height 1080 --frames 1800
step decode_1080p 40 80 "$PYTHON" benchmarks/algorithm.py --decode-only --width 1920 --height 1080 --frames 1800 --repeats 3
step bench_1080p_torch_software 50 100 "$PYTHON" benchmarks/algorithm.py --device cuda --width 1920 --height 1080 \
    --frames 1800 --repeats 3 --decoder software
step bench_1080p_previous_path 50 100 "$PYTHON" benchmarks/algorithm.py --device cuda --width 1920 --height 1080 \
    --frames 1800 --repeats 3 --analysis opencv --decoder software
step decode_1080p_h264 40 90 "$PYTHON" benchmarks/algorithm.py --decode-only --codec h264 --width 1920 --height 1080 \
    --frames 1800 --repeats 3

echo "== summary ($SECONDS s)"
cat "$SUMMARY"
