"""The ``promptseg`` command: models, embed, segment, evaluate, train, bench, annotate.

Errors a user can cause print one line (``promptseg: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PromptError, PromptsegError
from .evaluate import CLICK_RULES  # numpy and scipy only: the CLI stays quick to start


def _numbers(what: str, *n: int):
    """An argparse type: comma-separated numbers, as many as one of ``n``."""
    def parse(text: str) -> list[float]:
        try:
            vals = [float(v) for v in text.replace(" ", "").split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} must be comma-separated numbers") from None
        if len(vals) not in n:
            raise argparse.ArgumentTypeError(f"{what} {text!r} needs {' or '.join(map(str, n))} numbers")
        return vals

    return parse


_point, _box, _window = _numbers("point", 2, 3), _numbers("box", 4, 6), _numbers("window", 2)


def _load_image(spec: str):
    """IMAGE argument -> (array, ImageMeta); ``sample:NAME`` loads a bundled sample."""
    if spec.startswith("sample:"):
        from .samples import load_sample

        return load_sample(spec.split(":", 1)[1])
    from .io import read_image_or_pyramid

    return read_image_or_pyramid(spec)  # a slide: every level, lazily


def _model(args):
    from .models import load_model

    return load_model(args.model, checkpoint=args.checkpoint, device=args.device)


def _tqdm_progress(desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc=desc, unit="slice", disable=None)

    def update(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


# -- commands -------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from .models import registry
    from .models.checkpoints import cache_dir, resolve_checkpoint

    if args.action in (None, "list"):
        print(f"{'name':<16} {'arch':<6} {'licence':<11} {'where':<14} description")
        for name in registry.list_models():
            spec = registry.get_spec(name)
            label = f"{name} -> {spec.name}" if name != spec.name else name
            if spec.shipped:
                where = "shipped"
            elif (cache_dir() / spec.filename).is_file():
                where = "cached"
            else:
                where = "download" if spec.url else "by hand"
            print(f"{label:<16} {spec.arch:<6} {spec.licence:<11} {where:<14} {spec.description}")
        print(f"cache folder: {cache_dir()}  (set PROMPTSEG_CACHE to change it)")
        return 0
    if args.action == "download":
        path = resolve_checkpoint(registry.get_spec(args.target))
        print(path)
        return 0
    if args.action == "verify":
        return _verify(Path(args.target), args.model)
    raise PromptsegError(f"unknown models action {args.action!r}")


def _verify(path: Path, name: str | None) -> int:
    from .models import registry
    from .models.build import guess_arch
    from .models.checkpoints import read_state_dict, sha256sum

    if not path.is_file():
        raise PromptsegError(f"{path} does not exist")
    digest = sha256sum(path)
    print(f"sha256 {digest}  {path}")
    specs = [registry.get_spec(name)] if name else [registry.get_spec(n) for n in registry.list_models()]
    known = [s for s in specs if s.sha256]
    match = [s.name for s in known if s.sha256 == digest]
    if match:
        print(f"OK: matches {', '.join(sorted(set(match)))}")
        return 0
    spec = registry.get_spec(name) if name else None
    if spec is not None and spec.sha256:
        print(f"MISMATCH: expected {spec.sha256} for {spec.name}")
        return 1
    arch = guess_arch(read_state_dict(path))  # raises CheckpointError for a truncated/corrupt file
    if spec is not None and arch != spec.arch:
        print(f"MISMATCH: {spec.name} is a {spec.arch} model; this file is {arch or 'no official SAM size'}")
        return 1
    print(f"readable checkpoint of architecture {arch or '(not an official SAM size)'}; no published hash to compare")
    return 0


def cmd_embed(args) -> int:
    from .embeddings import embed

    inputs = _expand(args.image)
    if len(inputs) > 1 or Path(args.image[0]).is_dir() or args.scheduler:
        from .distributed import embed_many

        bar, progress = _tqdm_progress("embedding tasks")
        try:
            paths = embed_many(inputs, args.output, model=args.model, checkpoint=args.checkpoint,
                               device="cpu" if args.device == "auto" else args.device, axis=args.axis,
                               modality=args.modality, window=args.window, batch_size=args.batch_size,
                               scheduler=args.scheduler, progress=progress, **_tiling(args))
        finally:
            bar.close()
        print(f"{len(paths)} image(s) embedded into {args.output}")
        return 0
    image, meta = _load_image(inputs[0])
    model = _model(args)
    bar, progress = _tqdm_progress("embedding")
    try:
        store = embed(image, model, axis=args.axis, cache=args.output, batch_size=args.batch_size, progress=progress,
                      modality=args.modality, window=args.window, overwrite=args.overwrite, **_tiling(args))
    finally:
        bar.close()
    what = "tile(s)" if "tiling" in store.signature else "slice(s)"
    print(f"{store.n_slices} {what} embedded with {model.name} in {args.output}")
    return 0


def _expand(items: list[str]) -> list[str]:
    """Image arguments -> files: a folder stands for the images in it (by extension)."""
    from .io import SUPPORTED_READ

    out = []
    for item in items:
        p = Path(item)
        if p.is_dir() and not item.endswith(".zarr"):
            out += sorted(str(f) for f in p.iterdir() if f.name.lower().endswith(SUPPORTED_READ))
        else:
            out.append(item)
    if not out:
        raise PromptsegError(f"no images found in {' '.join(items)}")
    return out


def cmd_segment(args) -> int:
    import numpy as np

    from .embeddings import embed
    from .io import write_labels
    from .session import Session

    if not (args.point or args.negative or args.box):
        raise PromptError("give at least one prompt: --point, --negative or --box")
    image, meta = _load_image(args.image)
    model = _model(args)
    store = None
    if args.cache:
        bar, progress = _tqdm_progress("embedding")
        try:
            store = embed(image, model, axis=args.axis, cache=args.cache, progress=progress, modality=args.modality,
                          window=args.window, lazy=True, **_tiling(args))
        finally:
            bar.close()
    s = Session(model, image, embeddings=store, axis=args.axis, modality=args.modality if store is None else None,
                window=args.window if store is None else None, zoom=_ZOOM[args.zoom], edges=_ZOOM[args.edges],
                **(_tiling(args) if store is None else {}))
    pred = None
    if args.box:
        b = args.box
        half = len(b) // 2
        pred = s.add_box(b[:half], b[half:])
    pts = [(p, True) for p in args.point] + [(p, False) for p in args.negative]
    if pts:
        pred = s.add_points([p for p, _ in pts], [f for _, f in pts])
    mask = np.asarray(pred.mask, dtype=np.uint8)
    out = write_labels(args.output, mask, meta)
    print(f"mask: {out} ({int(mask.sum())} pixels, predicted IoU {pred.score:.3f})")
    if args.overlay:
        from .visualize import save_overlay

        print(f"overlay: {save_overlay(args.overlay, s, mask, pts, pred.bbox)}")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .evaluate import evaluate, write_report

    labels = list(args.labels or [])
    if args.axis not in (None, 0):
        raise PromptsegError("evaluate prompts on slices along the first axis; reorder the volume instead of --axis")
    if labels and len(labels) != len(args.images):
        raise PromptsegError(f"{len(args.images)} image(s) but {len(labels)} label file(s); give one --labels per image")
    cases = []
    for i, name in enumerate(args.images):
        image, meta = _load_image(name)
        if labels:
            lab, _ = _load_image(labels[i])
        elif name.startswith("sample:"):
            from .samples import sample_ground_truth

            lab = sample_ground_truth(name.split(":", 1)[1])
            if lab is None:
                raise PromptsegError(f"{name} has no ground truth; pass --labels")
        else:
            raise PromptsegError(f"no labels for {name}; pass --labels")
        cases.append((name, np.asarray(image), np.asarray(lab), meta.spacing))
    model = _model(args)
    report = evaluate(model, cases, start=args.start, max_clicks=args.clicks, click_rule=args.click_rule,
                      modality=args.modality, window=args.window, zoom=_ZOOM[args.zoom], edges=_ZOOM[args.edges])
    write_report(report, args.output, args.plot)
    m = report["mean"]
    d = m["dice"]
    print(f"{report['n_objects']} objects, {args.start} start: Dice {d[0]:.3f} (1 prompt), "
          f"{d[min(2, len(d) - 1)]:.3f} (3), {d[-1]:.3f} ({len(d)}); NoC@85 {m['noc85']:.1f}, NoC@90 {m['noc90']:.1f}; "
          f"HD95 {m['hd95']:.2f}, MASD {m['masd']:.2f} (median, physical units); {m['ms_per_prompt']:.0f} ms per prompt")
    return 0


def cmd_train(args) -> int:
    from .train import train

    out = train(args.config, args.output, resume=not args.restart, max_minutes=args.max_minutes)
    print(f"weights: {out}")
    return 0


def cmd_annotate(args) -> int:
    import importlib

    # promptseg.napari is the one layer allowed to import Qt/napari; load it by name, only for this command
    launch = importlib.import_module("promptseg.napari._launch").launch
    launch(args.image, sample=args.sample, model=args.model, checkpoint=args.checkpoint, device=args.device)
    return 0


# -- parser ---------------------------------------------------------------------------------------
def _add_model_args(p):
    p.add_argument("--model", default="default", help="registry name (see `promptseg models`); default: the shipped model")
    p.add_argument("--checkpoint", help="local weights file; wins over the cache and downloads")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def _tiling(args) -> dict:
    tile = "auto" if args.tile is None else (None if args.tile == 0 else args.tile)
    return {"tile_shape": tile, "overlap": args.overlap, "level": args.level}


_ZOOM = {"auto": None, "on": True, "off": False}


def _add_zoom_arg(p):
    p.add_argument("--zoom", choices=list(_ZOOM), default="auto",
                   help="predict small objects again in a window around them (default: as the model's entry says)")
    p.add_argument("--edges", choices=list(_ZOOM), default="auto",
                   help="redraw mask boundaries with the model's edge refiner (default: when the model has one)")


def _add_image_args(p):
    p.add_argument("--axis", type=int, default=None, help="slicing axis of a 3D volume (default 0)")
    p.add_argument("--tile", type=int, default=None, help="tile side in pixels for large 2D images and slides "
                                                          "(default: automatic above 2 tiles; 0: never tile)")
    p.add_argument("--overlap", type=int, default=None, help="pixels shared by neighbouring tiles (default tile/4)")
    p.add_argument("--level", type=int, default=None, help="pyramid level of a slide to embed (0 = full resolution)")
    p.add_argument("--modality", choices=["ct", "mri", "microscopy", "pathology"],
                   help="intensity handling: ct uses the soft-tissue window -160,240 HU")
    p.add_argument("--window", type=_window, help="intensity window LO,HI mapped to 0..255 (overrides --modality)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptseg", description="Interactive, promptable segmentation of biomedical images.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list, download or verify model weights",
                       description="List the registered models, download one (SHA256-checked) into the cache, or verify a file.")
    p.add_argument("action", nargs="?", choices=["list", "download", "verify"], help="default: list")
    p.add_argument("target", nargs="?", help="model NAME for download, file PATH for verify")
    p.add_argument("--model", help="with verify: the model the file should be")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="precompute image embeddings into a zarr cache",
                       description="Embed a 2D image or a 3D volume (slice by slice) into a zarr cache. An interrupted run "
                                   "resumes where it stopped; a cache made for another image or model is refused. Several "
                                   "images or a folder are embedded on Dask (local threads, or a cluster with --scheduler).")
    p.add_argument("image", nargs="+", help="TIFF, PNG/JPEG, zarr/OME-Zarr, NIfTI file, sample:NAME, or a folder of images")
    p.add_argument("-o", "--output", required=True,
                   help="cache folder (zarr); with several images or a folder: a folder receiving NAME.zarr per image")
    p.add_argument("--batch-size", type=int, default=None, help="slices per encoder call (default 1 on CPU, 8 on GPU)")
    p.add_argument("--scheduler", help="Dask: threads (default for many images), processes, or a dask.distributed "
                                       "scheduler address such as tcp://host:8786")
    p.add_argument("--overwrite", action="store_true", help="replace a cache made for something else")
    _add_model_args(p)
    _add_image_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("segment", help="segment one object from clicks and/or a box",
                       description="Segment one object from prompts in napari coordinates: R,C in 2D, Z,R,C in 3D. "
                                   "Writes the mask (TIFF, NIfTI or OME-Zarr, by extension) and optionally a PNG overlay.")
    p.add_argument("image", help="TIFF, PNG/JPEG, zarr/OME-Zarr, NIfTI file, or sample:NAME")
    p.add_argument("--point", type=_point, action="append", default=[], metavar="R,C", help="positive click (repeatable)")
    p.add_argument("--negative", type=_point, action="append", default=[], metavar="R,C", help="negative click (repeatable)")
    p.add_argument("--box", type=_box, metavar="R0,C0,R1,C1", help="box corners (Z,R0,C0,Z,R1,C1 in 3D)")
    p.add_argument("-o", "--output", required=True, help="mask file: .tif, .nii.gz or .ome.zarr")
    p.add_argument("--overlay", help="also write a PNG of the mask over the image")
    p.add_argument("--cache", help="embedding cache folder to use or create")
    _add_model_args(p)
    _add_image_args(p)
    _add_zoom_arg(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("bench", help="time the encoder and decoder against segment-anything (and micro-sam)",
                       description="Run promptseg's encoder (embed) and decoder (Session.add_point) side by side with "
                                   "segment-anything's SamPredictor (and micro-sam when it is installed) on the same "
                                   "random weights, in one process, and print the times and their ratios.")
    p.add_argument("--arch", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"], help="SAM size (default vit_b)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"], help="promptseg's encoder")
    p.add_argument("--images", type=int, default=2, help="images for the encoder timing (default 2)")
    p.add_argument("--clicks", type=int, default=30, help="clicks for the decoder timing (default 30)")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    p.add_argument("--no-micro-sam", action="store_true", help="skip micro-sam even when it is installed")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("evaluate", help="simulate an annotator and report Dice, NoC, HD95",
                       description="Simulated-annotator protocol: a start prompt (click, box or squiggle) then correction "
                                   "clicks at the centre of the larger error region, with the previous prediction fed back. "
                                   "Reports Dice/IoU per click, NoC@85/90, HD95 and MASD (physical units), ms per prompt.")
    p.add_argument("images", nargs="+", help="image files or sample:NAME (samples with ground truth need no --labels)")
    p.add_argument("--labels", action="append", help="label file for each image, in order (repeatable)")
    p.add_argument("--start", choices=["click", "box", "squiggle"], default="click")
    p.add_argument("--clicks", type=int, default=20, help="correction clicks after the start prompt (default 20)")
    p.add_argument("--click-rule", choices=list(CLICK_RULES), default="area",
                   help="which error a correction click goes to: the one with more pixels (area, default), the "
                        "deeper one, as RITM's clicker decides (ritm), or the largest connected region (region)")
    p.add_argument("-o", "--output", help="JSON report")
    p.add_argument("--plot", help="PNG of mean Dice against prompts")
    _add_model_args(p)
    _add_image_args(p)
    _add_zoom_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model from a config (seeded, resumable)",
                       description="Train a model from a TOML config in configs/: checkpoints every few hundred steps, "
                                   "resumes from the last one unless --restart.")
    p.add_argument("--config", required=True, help="e.g. configs/default_cpu.toml")
    p.add_argument("-o", "--output", required=True, help="output folder for checkpoints and logs")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("annotate", help="open napari with the promptseg Annotator",
                       description="Open napari with an image (or a bundled sample) and the promptseg Annotator docked; "
                                   "embedding starts at once. Needs the napari extra: pip install 'promptseg[napari]'.")
    p.add_argument("image", nargs="?", help="image file to open (any format napari or promptseg reads)")
    p.add_argument("--sample", help="bundled sample instead of a file: coins, cell, ihc, camera, ct_lesions, large_2d")
    _add_model_args(p)
    p.set_defaults(func=cmd_annotate)
    return parser


def cmd_bench(args) -> int:
    import json

    from .bench import run, table

    info = run(args.arch, device=args.device, precision=args.precision, images=args.images, clicks=args.clicks,
               size=args.size, micro_sam=not args.no_micro_sam, progress=lambda m: print(m, file=sys.stderr))
    print(table(info))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PromptsegError as e:
        print(f"promptseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
