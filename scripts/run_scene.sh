#!/usr/bin/env bash
# Run the SCORP stages built so far on one scene, with the flags of the authors' README.
#
#   scripts/run_scene.sh D M [extra train_3dgs.py options...]
#
# Environment:
#   SPLIT      split file name in D (default split.yml)
#   SEG2D_ARGS options for segmentation_2d.py (default: none = GroundingDINO + SAM 2; the demo uses
#              "--backend masks" to import the generated masks)
# Stages today: 1 segmentation_2d.py, 2 train_3dgs.py, 3 segmentation_3dgs.py, 4 view_selection.py,
# then render_3dgs.py (test-view renders + metrics). Stops at the first failing stage.
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

echo "== 1 2D segmentation: segmentation_2d.py"
python segmentation_2d.py -s "$D" ${SEG2D_ARGS:-}
echo "== 2 reconstruction: train_3dgs.py"
python train_3dgs.py -s "$D" -m "$M" --test_iterations -1 --eval --split_yml_name "$SPLIT" "$@"
echo "== 3 3D segmentation: segmentation_3dgs.py"
python segmentation_3dgs.py -s "$D" -m "$M" -r 1 --eval --split_yml_name "$SPLIT"
echo "== 4 view selection: view_selection.py"
python view_selection.py -s "$D" -m "$M" -r 1 --eval --split_yml_name "$SPLIT"
echo "== render + metrics: render_3dgs.py"
python render_3dgs.py -s "$D" -m "$M" --eval --split_yml_name "$SPLIT"
