#!/usr/bin/env bash
# Run the SCORP stages built so far on one scene, with the flags of the authors' README.
#
#   scripts/run_scene.sh D M [extra train_3dgs.py options...]
#
# Environment: SPLIT (split file name in D, default split.yml).
# Stages today: train_3dgs.py (reconstruction) and render_3dgs.py (test-view renders + metrics).
# Stops at the first failing stage.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 SCENE_DIR MODEL_DIR [train_3dgs.py options...]" >&2
    exit 2
fi
D=$1
M=$2
shift 2
SPLIT=${SPLIT:-split.yml}
cd "$(dirname "$0")/.."

echo "== reconstruction: train_3dgs.py"
python train_3dgs.py -s "$D" -m "$M" --test_iterations -1 --eval --split_yml_name "$SPLIT" "$@"
echo "== render + metrics: render_3dgs.py"
python render_3dgs.py -s "$D" -m "$M" --eval --split_yml_name "$SPLIT"
