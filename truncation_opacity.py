#!/usr/bin/env python
"""Stage 6: remove the nearly transparent Gaussians of each generated proxy.

    python truncation_opacity.py -m M [--threshold 0.1] [--object_name NAME]

For every M/generated/<prompt>.ply, the Gaussians with opacity < --threshold are removed and the
file is rewritten (atomically). The untouched generator output is kept as <prompt>.ply.bak: it is
written once and never overwritten, and a re-run starts again from it (so changing the threshold
works). A <prompt>.ply that stage 5 regenerated after a truncation is recognised by its checksum
and becomes the new .bak. A threshold that would remove every Gaussian of a proxy stops the stage
before anything is written. Writes M/generated/truncation.json (counts, checksums, options).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil

from utils.cli import run_main, setup_logging
from utils.errors import InputError

log = logging.getLogger("truncation_opacity")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="model folder M holding generated/<prompt>.ply")
    p.add_argument("--threshold", type=float, default=0.1, help="Gaussians with opacity below this are removed (default: 0.1)")
    p.add_argument("--object_name", default=None, help="truncate only this prompt (default: every proxy in M/generated)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def main() -> None:
    args = build_parser().parse_args()
    setup_logging(args.quiet)
    from scene.gaussian_model import GaussianModel
    from utils.arguments import git_revision
    from utils.io import atomic_path, read_json, write_json
    from utils.proxy import BACKUP_SUFFIX, GENERATED, TRUNCATION_RECORD, file_sha256, list_proxies, opacity_keep_mask

    if not 0.0 <= args.threshold < 1.0:
        raise InputError(None, f"--threshold must be in [0, 1), got {args.threshold}")
    gen = os.path.join(args.model_path, GENERATED)
    if not os.path.isdir(gen):
        raise InputError(gen, "folder not found (run trellis_img2gs.py first)")
    prompts = list_proxies(gen)
    if args.object_name is not None:
        if args.object_name not in prompts:
            raise InputError(os.path.join(gen, f"{args.object_name}.ply"), f"proxy not found; proxies: {prompts}")
        prompts = [args.object_name]
    if not prompts:
        raise InputError(gen, "no <prompt>.ply proxy in this folder")
    record_path = os.path.join(gen, TRUNCATION_RECORD)
    record = read_json(record_path) if os.path.isfile(record_path) else {"objects": {}}

    # -- decide and compute everything before writing ------------------------------------------
    plans = []
    for prompt in prompts:
        ply = os.path.join(gen, f"{prompt}.ply")
        bak = ply + BACKUP_SUFFIX
        previous = record.get("objects", {}).get(prompt, {})
        # a .bak is replaced only when the record proves <prompt>.ply is not our own earlier output
        known = previous.get("output_sha256")
        fresh_output = not os.path.isfile(bak) or (known is not None and file_sha256(ply) != known)
        if os.path.isfile(bak) and fresh_output:
            log.info("%s: %s differs from the last truncated output: it is a new generator output and replaces the .bak", prompt, ply)
        source = ply if fresh_output else bak
        model = GaussianModel.from_ply(source)
        keep = opacity_keep_mask(model.params["opacities"].detach(), args.threshold)
        if not bool(keep.any()):
            raise InputError(source, f"every one of its {len(model)} Gaussians has opacity < {args.threshold}: nothing would remain")
        plans.append((prompt, ply, bak, source, fresh_output, model, keep))

    # -- write ------------------------------------------------------------------------------------
    rows = {}
    for prompt, ply, bak, source, fresh_output, model, keep in plans:
        if fresh_output:
            with atomic_path(bak, suffix=".ply") as tmp:
                shutil.copyfile(ply, tmp)
        out = model.subset(keep)
        out.save_ply(ply)
        rows[prompt] = {
            "source": os.path.basename(bak),
            "before": len(model),
            "after": len(out),
            "removed": len(model) - len(out),
            "backup_sha256": file_sha256(bak),
            "output_sha256": file_sha256(ply),
        }
        print(f"{prompt}: kept {len(out)} of {len(model)} Gaussians (opacity >= {args.threshold}) -> {ply}")
    record = {"schema": 1, "stage": "truncation_opacity", "git": git_revision(), "threshold": args.threshold,
              "objects": {**record.get("objects", {}), **rows}}
    write_json(record_path, record)


if __name__ == "__main__":
    run_main(main)
