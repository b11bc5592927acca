"""Stage 1 (segmentation_2d.py): the pure core, the masks backend on a generated scene, and the
gdino_sam2 backend end to end with tiny random-weight models of the real transformers architectures
(built here from small configs; nothing is downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from utils.errors import InputError
from utils.segmentation import (
    Detection,
    build_captions,
    choose_boxes,
    clean_mask,
    compose_rgba,
    describe_detections,
    detections_from_logits,
    normalize_phrase,
    pack_mask,
    resolve_thresholds,
    save_rgba,
    token_segments,
    union_masks,
    unpack_mask,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["red box", "blue mug"]


def make_scene(out, views):
    proc = subprocess.run([sys.executable, "scripts/make_demo_scene.py", str(out), "--num_views", str(views), "--width", "64",
                           "--height", "48", "--num_points", "800", "--supersample", "1", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def set_description(D, **keys):
    path = D / "description.yml"
    data = yaml.safe_load(path.read_text())
    data.update(keys)
    path.write_text(yaml.safe_dump(data))


def read_png(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def run_script(*args):
    return subprocess.run([sys.executable, "segmentation_2d.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


# -- pure core ------------------------------------------------------------------------------------
def test_normalize_phrase_and_captions():
    assert normalize_phrase("  Red-Box. ") == "red box"
    assert normalize_phrase("light  green\tbowl") == "light green bowl"
    assert normalize_phrase("a_b") == "a b"
    assert build_captions(["Red Box", "blue mug"], True) == ["red box. blue mug."]
    assert build_captions(["Red Box", "blue mug"], False) == ["red box.", "blue mug."]


def test_choose_boxes_matches_phrase_case_insensitively_and_takes_best_score():
    dets = [
        Detection("red box", 0.40, (0, 0, 1, 1)),
        Detection("box", 0.90, (1, 1, 2, 2)),           # partial phrase: not the prompt
        Detection("red  box.", 0.55, (2, 2, 3, 3)),     # best matching one
        Detection("blue mug", 0.30, (3, 3, 4, 4)),
        Detection("blue mug red box", 0.95, (4, 4, 5, 5)),  # merged phrase: matches neither
    ]
    chosen, missing = choose_boxes(["Red Box", "blue mug", "green ball"], dets)
    assert missing == ["green ball"]
    assert chosen["Red Box"].box == (2, 2, 3, 3) and chosen["Red Box"].score == 0.55
    assert chosen["blue mug"].box == (3, 3, 4, 4)
    assert choose_boxes(["red box"], []) == ({}, ["red box"])


def test_describe_detections_lists_phrases_and_scores():
    dets = [Detection("ball", 0.33, (0, 0, 1, 1)), Detection("blue mug", 0.41, (0, 0, 1, 1)), Detection("", 0.2, (0, 0, 1, 1))]
    assert describe_detections(dets) == "'blue mug' 0.41, 'ball' 0.33, (no phrase) 0.20"
    assert describe_detections([]) == "none"
    many = [Detection(f"x{i}", 0.5, (0, 0, 1, 1)) for i in range(25)]
    assert describe_detections(many, limit=20).endswith("and 5 more")


def test_token_segments_and_grounding_rule():
    tokens = ["[CLS]", "red", "box", ".", "blue", "mug", ".", "[SEP]"]
    ids = list(range(len(tokens)))
    seps = {0, 3, 6, 7}
    segs = token_segments(ids, seps)
    assert segs == [-1, 0, 0, -1, 1, 1, -1, -1]
    probs = np.full((4, 8), 0.05)
    probs[0, [4, 5]] = [0.5, 0.8]      # "blue mug", score 0.8
    probs[1, [1, 2]] = [0.1, 0.6]      # best token "box"; "red" below the text threshold -> phrase "box"
    probs[1, 5] = 0.3                  # above the text threshold but in another segment: not in the phrase
    probs[2, 2] = 0.2                  # below the box threshold: dropped
    probs[3, 0] = 0.9                  # best on [CLS] (score 0.9); phrase from its best word token
    probs[3, [1, 2]] = [0.3, 0.4]
    boxes = np.array([[0.5, 0.5, 0.5, 0.5], [0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 1, 1], [0.9, 0.9, 0.4, 0.4]])
    dets = detections_from_logits(probs, boxes, segs, 0.25, 0.25, (64, 48), lambda pos: " ".join(tokens[i] for i in pos))
    assert [d.phrase for d in dets] == ["red box", "blue mug", "box"]  # highest score first
    assert [round(d.score, 3) for d in dets] == [0.9, 0.8, 0.6]
    assert dets[1].box == (16.0, 12.0, 48.0, 36.0)                      # cx,cy,w,h relative -> x0,y0,x1,y1 px
    assert dets[2].box == (0.0, 0.0, 32.0, 48.0)
    assert dets[0].box == pytest.approx((44.8, 33.6, 64.0, 48.0))       # clipped to the image
    chosen, missing = choose_boxes(PROMPTS, dets)
    assert not missing and chosen["red box"].score == pytest.approx(0.9)
    with pytest.raises(ValueError, match="probs"):
        detections_from_logits(probs[:, :5], boxes, segs, 0.25, 0.25, (64, 48), str)


def test_resolve_thresholds_order():
    assert resolve_thresholds(0.3, 0.5, 0.6)[:2] == (0.3, 0.3)               # detect_conf is both
    assert resolve_thresholds(None, 0.5, 0.6)[:2] == (0.5, 0.6)
    assert resolve_thresholds(None, None, None)[:2] == (0.35, 0.25)
    box, text, src = resolve_thresholds(0.3, None, None, cli_box=0.0)
    assert (box, text) == (0.0, 0.3) and "command line" in src and "detect_conf" in src


def test_clean_mask_opening_removes_speck_and_closing_fills_hole():
    logits = np.full((40, 40), -3.0)
    logits[10:30, 10:30] = 2.0        # object
    logits[20, 20] = -1.0             # 1-px hole inside
    logits[3, 35] = 5.0               # 1-px speck outside
    logits[0, 0] = 0.0                # exactly 0 is outside (logit > 0)
    raw = clean_mask(logits, kernel_size=0)
    assert raw[3, 35] and not raw[20, 20] and not raw[0, 0]
    m = clean_mask(logits, kernel_size=5)
    assert m.dtype == bool and m.shape == (40, 40)
    assert not m[3, 35]                # speck removed by the opening
    assert m[20, 20]                   # hole filled by the closing
    assert m[11:29, 11:29].all() and m[10:30, 10:30].sum() >= 390  # the opening only rounds the square's corners
    assert not m[:10].any() and not m[30:].any() and not m[:, :10].any() and not m[:, 30:].any()
    assert clean_mask(logits, 5, threshold=3.0).sum() == 0  # the threshold is honoured (speck alone > 3, then opened away)


def test_rgba_composition_union_and_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    a = np.zeros((6, 7), bool); a[1:3, 1:4] = True
    b = np.zeros((6, 7), bool); b[2:5, 3:6] = True
    u = union_masks([a, b], (6, 7))
    assert (u == (a | b)).all() and not union_masks([], (6, 7)).any()
    rgba = compose_rgba(rgb, a)
    assert rgba.dtype == np.uint8 and rgba.shape == (6, 7, 4)
    assert (rgba[..., :3] == rgb).all() and set(np.unique(rgba[..., 3])) == {0, 255}
    save_rgba(str(tmp_path / "x" / "f.png"), rgba)
    mode, back = read_png(tmp_path / "x" / "f.png")
    assert mode == "RGBA" and (back == rgba).all()
    assert os.listdir(tmp_path / "x") == ["f.png"]  # no temporary file left
    with pytest.raises(ValueError):
        compose_rgba(rgb, a[:5])
    for shape in [(6, 7), (1, 1), (3, 13)]:
        m = rng.random(shape) > 0.5
        assert (unpack_mask(pack_mask(m)) == m).all()


def test_model_source_resolution(tmp_path, monkeypatch):
    from utils.detectors import require_transformers, resolve_model_source

    (tmp_path / "ckpt" / "grounding-dino-base").mkdir(parents=True)
    assert resolve_model_source(str(tmp_path), "") == str(tmp_path)
    assert resolve_model_source("IDEA-Research/grounding-dino-base", str(tmp_path / "ckpt")) == str(tmp_path / "ckpt" / "grounding-dino-base")
    assert resolve_model_source("facebook/sam2.1-hiera-large", str(tmp_path / "ckpt")) == "facebook/sam2.1-hiera-large"
    for bad in (str(tmp_path / "nothing"), "./nothing", "a/b/c"):
        with pytest.raises(InputError, match="model folder not found"):
            resolve_model_source(bad, str(tmp_path / "ckpt"))
    import socket

    from utils.detectors import hub_load_kwargs

    assert hub_load_kwargs(str(tmp_path)) == {}

    def unreachable(*a, **k):
        raise OSError("network unreachable")

    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(InputError, match="not in the local Hugging Face cache .* cannot be reached.*huggingface-cli download"):
        hub_load_kwargs("no-such-org-scorp/no-such-model")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install transformers"):
        require_transformers("Sam2VideoModel")


# -- masks backend --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene8(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("seg") / "D", 8)


def test_masks_backend_reproduces_ground_truth(scene8, tmp_path):
    import shutil

    import segmentation_2d

    D = tmp_path / "D"
    shutil.copytree(scene8, D)
    segmentation_2d.main(["-s", str(D), "--backend", "masks", "--quiet"])
    prompts = yaml.safe_load((D / "description.yml").read_text())["prompts"].split(",")
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(D / "images"))
    out = D / "masked_image_rgba"
    assert sorted(os.listdir(out)) == sorted(prompts + ["masked", "segmentation_2d.json"])
    for stem in stems:
        _, rgb = read_png(D / "images" / f"{stem}.png")
        union = np.zeros(rgb.shape[:2], bool)
        for p in prompts:
            mode, rgba = read_png(out / p / f"{stem}.png")
            _, gt = read_png(D / "masks" / p / f"{stem}.png")
            assert mode == "RGBA" and rgba.dtype == np.uint8 and rgba.shape == rgb.shape[:2] + (4,)
            assert (rgba[..., :3] == rgb).all()
            assert (rgba[..., 3] == gt).all()               # bit-exact, GT is {0, 255}
            union |= gt > 127
        mode, u = read_png(out / "masked" / f"{stem}.png")
        assert mode == "RGBA" and (u[..., :3] == rgb).all() and (u[..., 3] == np.where(union, 255, 0)).all()
    for p in prompts + ["masked"]:
        assert sorted(os.listdir(out / p)) == [f"{s}.png" for s in stems]
    rec = json.loads((out / "segmentation_2d.json").read_text())
    assert rec["stage"] == "segmentation_2d" and rec["options"]["backend"] == "masks"
    assert rec["result"]["frames"] == stems and rec["result"]["prompts"] == prompts
    _, gt0 = read_png(D / "masks" / prompts[0] / f"{stems[0]}.png")
    assert rec["result"]["mask_area_px"][prompts[0]][stems[0]] == int((gt0 > 127).sum())


def test_masks_backend_missing_frame_fails_before_writing(scene8, tmp_path):
    import shutil

    D = tmp_path / "D"
    shutil.copytree(scene8, D)
    os.remove(D / "masks" / "blue mug" / "frame_00003.png")
    proc = run_script("-s", D, "--backend", "masks")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "blue mug" in lines[0] and "frame_00003" in lines[0] and "1 of 8" in lines[0]
    assert not (D / "masked_image_rgba").exists()


# -- gdino_sam2 backend with tiny random-weight models --------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A GroundingDINO (Swin + BERT) and a SAM 2 video (Hiera) model of the real architectures,
    random weights, saved with their processors as local folders."""
    import torch
    from transformers import (
        BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
        GroundingDinoProcessor, Sam2HieraDetConfig, Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoMaskDecoderConfig,
        Sam2VideoModel, Sam2VideoProcessor, Sam2VideoPromptEncoderConfig, Sam2VideoVideoProcessor, Sam2VisionConfig,
        SwinConfig,
    )

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "box", "blue", "mug", "green", "ball"]) + "\n")
    tok = BertTokenizer(str(vocab))
    gd_cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                               intermediate_size=16, max_position_embeddings=64),
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=30, encoder_n_points=2, decoder_n_points=2)
    gd = root / "gdino"
    GroundingDinoForObjectDetection(gd_cfg).save_pretrained(gd)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                           tokenizer=tok).save_pretrained(gd)

    s = 128
    hiera = Sam2HieraDetConfig(hidden_size=12, image_size=[s, s], embed_dim_per_stage=[12, 24, 48, 96], blocks_per_stage=[1, 1, 2, 1],
                               num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                               global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2])
    sam_cfg = Sam2VideoConfig(
        vision_config=Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[96, 48, 24, 12],
                                       backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=128),
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=128, image_size=s, patch_size=16),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=s, memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, memory_fuser_num_layers=1)
    sam = root / "sam2"
    Sam2VideoModel(sam_cfg).save_pretrained(sam)
    Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size={"height": s, "width": s}),
                       video_processor=Sam2VideoVideoProcessor(size={"height": s, "width": s})).save_pretrained(sam)
    return gd, sam


@pytest.fixture(scope="module")
def scene5(tmp_path_factory):
    D = make_scene(tmp_path_factory.mktemp("seg5") / "D", 5)
    set_description(D, prompts="red box,Blue Mug", first_image_name="frame_00002", detect_conf=0.0)
    return D


def test_gdino_sam2_end_to_end_key_frame_in_the_middle(scene5, tiny_models, tmp_path):
    import shutil

    import segmentation_2d

    gd, sam = tiny_models
    D = tmp_path / "D"
    shutil.copytree(scene5, D)
    # thresholds 0: random weights ground every query; each prompt's best box is deterministic.
    # No open/close here (unit-tested above): random-weight logits are speckled, and the opening
    # would erase most of them, leaving the union check below with little to compare.
    segmentation_2d.main(["-s", str(D), "--detector", str(gd), "--tracker", str(sam), "--device", "cpu",
                          "--morph_kernel", "0", "--quiet"])
    prompts = ["red box", "Blue Mug"]
    stems = [f"frame_{i:05d}" for i in range(5)]
    out = D / "masked_image_rgba"
    for p in prompts + ["masked"]:
        assert sorted(os.listdir(out / p)) == [f"{s}.png" for s in stems], p  # frame 0 and the last included
    differ = 0
    for stem in stems:
        _, rgb = read_png(D / "images" / f"{stem}.png")
        alphas = []
        for p in prompts + ["masked"]:
            mode, rgba = read_png(out / p / f"{stem}.png")
            assert mode == "RGBA" and rgba.dtype == np.uint8 and rgba.shape == (48, 64, 4)
            assert (rgba[..., :3] == rgb).all()
            assert set(np.unique(rgba[..., 3])) <= {0, 255}
            alphas.append(rgba[..., 3])
        assert (alphas[2] == np.maximum(alphas[0], alphas[1])).all()  # union = OR
        differ += int((alphas[0] != alphas[1]).sum())
    assert differ > 0  # the masks are not all equal (or all empty): the OR above was a real test
    rec = json.loads((out / "segmentation_2d.json").read_text())["result"]
    assert rec["key_frame"] == "frame_00002" and rec["key_frame_index"] == 2
    assert rec["box_threshold"] == 0.0 and rec["text_threshold"] == 0.0 and "detect_conf" in rec["threshold_source"]
    assert rec["captions"] == ["red box. blue mug."]
    for p in prompts:
        b = rec["boxes"][p]
        assert normalize_phrase(b["phrase"]) == normalize_phrase(p) and 0 <= b["score"] <= 1
        x0, y0, x1, y1 = b["box_xyxy"]
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 48
        assert set(rec["mask_area_px"][p]) == set(stems)
    assert rec["mask_area_px"]["red box"]["frame_00000"] == int((read_png(out / "red box" / "frame_00000.png")[1][..., 3] > 0).sum())


def test_tracker_covers_every_frame_for_any_key_frame(tiny_models):
    """Forward and backward from the key frame: frame 0 and the last frame get masks whether the key
    frame is first, second (the original lost frame 0 there) or last."""
    from utils.detectors import Sam2VideoTracker

    _, sam = tiny_models
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    tracker = Sam2VideoTracker(str(sam), "cpu")
    for key in (0, 1, 2):
        done = []
        masks, offloaded = tracker.track(frames, key, [(2, 2, 20, 15), (10, 5, 30, 22)], progress=done.append)
        assert len(masks) == 2 and all(len(m) == 3 for m in masks) and not offloaded
        assert sum(done) == 3
        assert unpack_mask(masks[1][0]).shape == (24, 32)


def test_gdino_sam2_undetected_prompt_lists_detections_and_writes_nothing(scene5, tiny_models, tmp_path):
    import shutil

    import segmentation_2d

    gd, sam = tiny_models
    D = tmp_path / "D"
    shutil.copytree(scene5, D)
    # text threshold above 1: every box is kept (box threshold 0) but grounds no word
    with pytest.raises(InputError) as err:
        segmentation_2d.main(["-s", str(D), "--detector", str(gd), "--tracker", str(sam), "--device", "cpu",
                              "--text_threshold", "1.01", "--quiet"])
    msg = str(err.value)
    assert "'red box', 'Blue Mug' not detected on frame_00002" in msg and "text_threshold 1.01" in msg
    assert "detections: (no phrase) " in msg and "and 10 more" in msg  # 30 queries, 20 listed
    assert "\n" not in msg
    assert not (D / "masked_image_rgba").exists()
    with pytest.raises(InputError, match="detections: none"):
        segmentation_2d.main(["-s", str(D), "--detector", str(gd), "--tracker", str(sam), "--device", "cpu",
                              "--box_threshold", "1.01", "--quiet"])
    assert not (D / "masked_image_rgba").exists()


def test_gdino_sam2_bad_inputs_write_nothing(scene5, tmp_path):
    import shutil

    import segmentation_2d

    D = tmp_path / "D"
    shutil.copytree(scene5, D)
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(InputError, match="cannot load the GroundingDINO model from a local folder.*huggingface-cli download"):
        segmentation_2d.main(["-s", str(D), "--detector", str(empty), "--tracker", str(empty), "--device", "cpu", "--quiet"])
    with pytest.raises(InputError, match="model folder not found"):
        segmentation_2d.main(["-s", str(D), "--detector", str(tmp_path / "none"), "--device", "cpu", "--quiet"])
    set_description(D, first_image_name="frame_00099")
    with pytest.raises(InputError, match=r"'frame_00099' is not a registered frame \(5 frames, e.g. frame_00000, frame_00001"):
        segmentation_2d.main(["-s", str(D), "--detector", str(empty), "--device", "cpu", "--quiet"])
    assert not (D / "masked_image_rgba").exists()
    proc = run_script("-s", tmp_path / "no_scene")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "scene folder not found" in proc.stderr
