#!/usr/bin/env bash
# The whole SCORP chain on one scene, with the command lines of the authors' README.
#
#   scripts/run_scene.sh D M [--from STAGE] [--force] [extra train_3dgs.py options...]
#
#   --from STAGE  start at stage STAGE (1-9); earlier stages must have run
#   --force       run every stage from the first one run, even where its outputs exist
#
# A stage whose completion record exists is skipped (each stage writes its record last, atomically,
# and the records of a stage and of all later ones are removed before it starts, so an interrupted
# stage has none and runs again); once one stage runs, every later stage runs too (its inputs
# changed). The chain stops at the first failing stage with that stage's exit status; killing the
# chain (SIGTERM, SIGINT, SIGHUP) stops the running stage cleanly (no half-written file) with 143/130.
#
# Environment (defaults = the authors' README):
#   SPLIT        split file name in D (split.yml)
#   SEG2D_ARGS   segmentation_2d.py options (none = GroundingDINO + SAM 2; the demo: --backend masks)
#   GEN_ARGS     trellis_img2gs.py options (none = TRELLIS; the demo: --backend file --proxy D/gt/proxies)
#   ALIGN_ARGS   align_3dgs_clpe_9dof.py options (none = --matcher auto; the demo: --matcher sift)
#   REFINE_ITERS post_refine_gs.py --iterations and render_3dgs.py --iter (800)
#   REFINE_ARGS  extra post_refine_gs.py options
#   RENDER_ARGS  extra render_3dgs.py options
set -euo pipefail
usage() { echo "usage: $0 SCENE_DIR MODEL_DIR [--from STAGE] [--force] [train_3dgs.py options...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
D=$1
M=$2
shift 2
FROM=1
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || usage; FROM=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        *) break ;;
    esac
done
case "$FROM" in [1-9]) ;; *) echo "error: --from takes a stage number 1-9, got '$FROM'" >&2; exit 2 ;; esac
SPLIT=${SPLIT:-split.yml}
ITERS=${REFINE_ITERS:-800}
cd "$(dirname "$0")/.."
[ -d "$D" ] || { echo "error: $D: scene folder not found" >&2; exit 2; }

# the completion record of each stage (written last by the stage)
record() {
    case "$1" in
        1) echo "$D/masked_image_rgba/segmentation_2d.json" ;;
        2) echo "$M/train_summary.json" ;;
        3) echo "$M/segmentation_3dgs.json" ;;
        4) echo "$M/view_selection.json" ;;
        5) echo "$M/trellis_img2gs.json" ;;
        6) echo "$M/generated/truncation.json" ;;
        7) echo "$M/align_3dgs_clpe_9dof.json" ;;
        8) echo "$M/post_refine_gs.json" ;;
        9) echo "$M/metrics.json" ;;
    esac
}

# Run a stage's command as a child and pass SIGTERM / SIGINT / SIGHUP on to it, so that `kill` of
# this script (or `timeout`, or a scheduler) stops the stage the way Ctrl-C does: the stage removes
# the file it was writing and exits 130 / 143. Returns the command's exit status.
CHILD=
run_child() {
    "$@" &
    CHILD=$!
    trap 'kill -TERM "$CHILD" 2>/dev/null' TERM INT HUP
    local status=0
    wait "$CHILD" || status=$?
    while kill -0 "$CHILD" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the stage itself
        status=0
        wait "$CHILD" || status=$?
    done
    trap - TERM INT HUP
    return "$status"
}

RUNNING=$FORCE
stage() {  # stage N TITLE command...
    local n=$1 title=$2
    shift 2
    if [ "$n" -lt "$FROM" ]; then
        return 0
    fi
    if [ "$RUNNING" -eq 0 ] && [ -f "$(record "$n")" ]; then
        echo "== $n $title: done ($(record "$n") exists), skipped"
        return 0
    fi
    RUNNING=1
    # the records of this stage and of every later one stop being true now: remove them first, so
    # that a stage interrupted half-way runs again next time instead of being taken as done
    local later
    for later in $(seq "$n" 9); do rm -f "$(record "$later")"; done
    echo "== $n $title: $*"
    local t0=$SECONDS status=0
    run_child "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "== stage $n ($title) failed with exit status $status; later stages not run" >&2
        exit "$status"
    fi
    echo "== $n $title: $((SECONDS - t0)) s"
}

# shellcheck disable=SC2086  # the *_ARGS variables are word lists
stage 1 "2D segmentation" python segmentation_2d.py -s "$D" ${SEG2D_ARGS:-}
stage 2 "reconstruction" python train_3dgs.py -s "$D" -m "$M" --test_iterations -1 --eval --split_yml_name "$SPLIT" "$@"
stage 3 "3D segmentation" python segmentation_3dgs.py -s "$D" -m "$M" -r 1 --eval --split_yml_name "$SPLIT"
stage 4 "view selection" python view_selection.py -s "$D" -m "$M" -r 1 --eval --split_yml_name "$SPLIT"
# shellcheck disable=SC2086
stage 5 "generation" python trellis_img2gs.py -s "$D" -m "$M" --eval --split_yml_name "$SPLIT" ${GEN_ARGS:-}
stage 6 "opacity truncation" python truncation_opacity.py -m "$M"
# shellcheck disable=SC2086
stage 7 "alignment" python align_3dgs_clpe_9dof.py -s "$D" -m "$M" --eval --split_yml_name "$SPLIT" ${ALIGN_ARGS:-}
# shellcheck disable=SC2086
stage 8 "refinement" python post_refine_gs.py -s "$D" -m "$M" -r 1 --images "$D/masked_image_rgba/masked" --sh_degree 0 \
    --iterations "$ITERS" --eval --split_yml_name "$SPLIT" ${REFINE_ARGS:-}
# shellcheck disable=SC2086
stage 9 "render and metrics" python render_3dgs.py -s "$D" -m "$M" -r 1 --iter "$ITERS" --eval --split_yml_name "$SPLIT" ${RENDER_ARGS:-}
