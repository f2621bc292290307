"""``promptmoe bench engine|click|refine|refine-stages|server|annotate``: run a benchmark of
:mod:`promptmoe_plugin.eval` (or the server's), print its table, write ``--json``."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from ls_backend.annotate_bench import bench_annotate, format_annotate_report
from ls_backend.bench import bench_samples, bench_server, files_root, format_server_report
from ls_backend.load import format_load_report, load_test
from ls_backend.server import load_model
from promptmoe_plugin.eval.click_bench import REFERENCE_POOLS, run_click_bench
from promptmoe_plugin.eval.clicker import FIRST_CLICKS, MAX_CLICKS
from promptmoe_plugin.eval.coarse import KINDS
from promptmoe_plugin.eval.engine_bench import (
    bench_engine,
    bench_runtimes,
    format_engine_report,
    format_runtime_report,
)
from promptmoe_plugin.eval.methods import CLICK_METHODS
from promptmoe_plugin.eval.options import parse_options
from promptmoe_plugin.eval.refine_bench import run_refine_bench
from promptmoe_plugin.eval.report import click_tables, refine_tables, write_json
from promptmoe_plugin.eval.stages import format_stage_table, stage_timings
from promptmoe_plugin.refine import VARIANTS
from promptmoe_plugin.sam import RUNTIMES, load_sam

from .annotate import quiet_ray
from .options import Subparsers, add_settings_options, engine, names, settings


def _run_engine(args: argparse.Namespace) -> int:
    if args.runtimes:
        if not args.data:
            raise ValueError("bench engine --runtimes needs --data (GrabCut, DAVIS folders)")
        config = settings(args).engine
        result = bench_runtimes(
            load_sam(config.sam_checkpoint, config.device),
            names(args.runtimes),
            args.data,
            images=args.images,
            runtime_cache=args.runtime_cache,
        )
        print(format_runtime_report(result))
    else:
        result = bench_engine(engine(args), repeats=args.repeats, batch=args.batch)
        print(format_engine_report(result))
    write_json(args.json, result)
    return 0


def _run_click(args: argparse.Namespace) -> int:
    result = run_click_bench(
        engine(args),
        args.data,
        names(args.methods),
        limit=args.limit,
        max_clicks=args.max_clicks,
        references=args.references,
        seed=args.seed,
        options=parse_options(args.option),
        first_click=args.first_click,
        reference_pool=args.reference_pool,
        out=args.out,
        overlays=args.overlays,
    )
    print(click_tables(result))
    write_json(args.json, result)
    return 0


def _run_refine(args: argparse.Namespace) -> int:
    result = run_refine_bench(
        engine(args),
        args.data,
        names(args.methods),
        names(args.coarse),
        limit=args.limit,
        baseline=args.baseline,
        bootstrap=args.bootstrap,
        seed=args.seed,
        options=parse_options(args.option),
        depth_model=settings(args).depth_model,
        encoder_images=args.encoder_images,
        out=args.out,
        overlays=args.overlays,
    )
    print(refine_tables(result))
    write_json(args.json, result)
    return 0


def _run_stages(args: argparse.Namespace) -> int:
    result = stage_timings(
        engine(args),
        args.data,
        args.variant,
        args.limit,
        args.scale,
        depth_model=settings(args).depth_model,
    )
    print(format_stage_table(result, args.variant))
    write_json(
        args.json,
        {"variant": args.variant, "scale": args.scale, "limit": args.limit, "stages": result},
    )
    return 0


def _run_server(args: argparse.Namespace) -> int:
    folders = [str(Path(f).resolve()) for f in args.data]
    with tempfile.TemporaryDirectory() as tmp:
        config = settings(args)
        # The images are served to the model as Label Studio local files under their root.
        root = files_root(bench_samples(folders, args.images))
        model_dir = config.model_dir if args.model_dir else Path(tmp)
        model = load_model(dataclasses.replace(config, model_dir=model_dir, local_files_root=root))
        if args.load:
            figures = load_test(
                model, folders, clients=args.clients, seconds=args.seconds, images=args.images
            )
        else:
            figures = bench_server(
                model, folders, images=args.images, latency_images=args.latency_images
            )
    print(format_load_report(figures) if args.load else format_server_report(figures))
    write_json(args.json, figures)
    return 0


def _run_annotate(args: argparse.Namespace) -> int:
    quiet_ray()
    workers = [int(n) for n in names(args.workers)]
    if any(n < 1 for n in workers):
        raise ValueError(f"--workers must be positive counts, got {args.workers}")
    figures = bench_annotate(
        settings(args),
        args.data,
        workers=workers,
        limit=args.limit,
        coarse=args.coarse,
        in_flight=args.batch,
        rounds=args.rounds,
        seed=args.seed,
        cpus=args.cpus,
    )
    print(format_annotate_report(figures))
    write_json(args.json, figures)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder (img/+gt/ or data_GT/+boundary_GT/); repeat for several",
    )
    p.add_argument("--limit", type=int, help="first N images of each dataset")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for every method, or for one with METHOD:KEY=VALUE "
        "(e.g. smartsam-ref:intent=dinov2, full:box_gate=none)",
    )
    p.add_argument("--json", help="write summary, per-image figures and config to this JSON file")
    p.add_argument("--out", help="folder for report.md and best/worst overlay PNGs")
    p.add_argument(
        "--overlays",
        type=int,
        default=3,
        help="best and worst cases drawn per method with --out (default 3)",
    )
    add_settings_options(p, ("engine",))
    _depth_option(p)


def _depth_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--depth-model",
        dest="depth_model",
        default=None,
        help="depth model path or hub id for the depth expert "
        "(env PROMPTMOE_DEPTH_MODEL; default: no depth expert)",
    )


def register(sub: Subparsers, bench: Subparsers) -> None:
    p = bench.add_parser(
        "engine", help="encoder and decoder time, batched vs one by one, cache, RSS"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions of each step (default 5)"
    )
    p.add_argument(
        "--batch", type=int, default=16, help="prompt sets decoded per batch (default 16)"
    )
    p.add_argument(
        "--runtimes",
        help="compare runtimes instead, comma-separated from "
        f"{', '.join(RUNTIMES)} (a name may end in -f32 or -bf16, e.g. openvino-f32; "
        "ENCODER/DECODER names both parts, e.g. torch/onnxruntime): encode and decode "
        "times, a SmartSAM first click, ratios to torch, and mask IoU with fp32 torch on "
        "--data images",
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="with --runtimes: dataset folder (GrabCut, DAVIS); repeat for several",
    )
    p.add_argument(
        "--images",
        type=int,
        default=10,
        help="with --runtimes: first N images of each --data folder (default 10)",
    )
    p.add_argument(
        "--runtime-cache",
        dest="runtime_cache",
        help="with --runtimes: folder of the exported encoder graphs "
        "(default ~/.cache/promptmoe/runtimes)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_settings_options(p, ("engine",))
    p.set_defaults(func=_run_engine)

    p = bench.add_parser("click", help="simulated clicks (NoC, mIoU@1) for click methods")
    p.add_argument(
        "--methods",
        default="sam,sam-single",
        help=f"comma-separated, from: {', '.join(CLICK_METHODS)} (default sam,sam-single)",
    )
    p.add_argument(
        "--max-clicks", type=int, default=MAX_CLICKS, help=f"click budget (default {MAX_CLICKS})"
    )
    p.add_argument(
        "--references",
        type=int,
        default=5,
        metavar="R",
        help="up to R reference masks for the methods that use them (default 5)",
    )
    p.add_argument(
        "--reference-pool",
        choices=REFERENCE_POOLS,
        default="auto",
        help="references from other instances of the image's class (same-class: a Label "
        "Studio label's exemplars), from the earlier images whatever their object (earlier), "
        "or same-class where sample names carry a class (auto, the default)",
    )
    p.add_argument(
        "--first-click",
        choices=FIRST_CLICKS,
        default="center",
        help="first click at the object's deepest pixel (center, the default), uniformly "
        "inside it, 5 px or more from its boundary, seeded (random), or the object's "
        "bounding box as the first interaction (box: a smart rectangle, then clicks; the "
        "plain SAM methods only)",
    )
    _common(p)
    p.set_defaults(func=_run_click)

    p = bench.add_parser("refine", help="refine generated coarse masks (delta IoU / BIoU, time)")
    p.add_argument(
        "--methods",
        default="full,lite,samrefiner,unrefined",
        help="comma-separated refine variants (default full,lite,samrefiner,unrefined)",
    )
    p.add_argument(
        "--coarse", default=",".join(KINDS), help=f"coarse-mask kinds (default {','.join(KINDS)})"
    )
    p.add_argument(
        "--baseline",
        default="samrefiner",
        help="method the CI of differences is computed against (default samrefiner)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="bootstrap resamples for the 95%% CI (default 2000; 0 = off)",
    )
    p.add_argument(
        "--encoder-images",
        type=int,
        metavar="K",
        help="time a real encode on the first K images only and use their median for the rest "
        "(default: every image; 0: no encoder time in sec_per_annotation)",
    )
    _common(p)
    p.set_defaults(func=_run_refine)

    p = bench.add_parser(
        "refine-stages", help="refinement stage timings at the original size and upscaled"
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder; repeat for several",
    )
    p.add_argument("--variant", default="lite", choices=[v for v in VARIANTS if v != "unrefined"])
    p.add_argument(
        "--limit", type=int, default=5, help="first N images of each dataset (default 5)"
    )
    p.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_settings_options(p, ("engine",))
    _depth_option(p)
    p.set_defaults(func=_run_stages)

    p = bench.add_parser(
        "server",
        help="HTTP vs in-process latency of /predict (clicks, drafts) and RSS over many images",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder (img/+gt/ or data_GT/+boundary_GT/); repeat for several",
    )
    p.add_argument("--images", type=int, default=100, help="distinct images sent (default 100)")
    p.add_argument(
        "--latency-images",
        type=int,
        default=20,
        help="of those, the images used for the latency figures (default 20)",
    )
    p.add_argument(
        "--load",
        action="store_true",
        help="instead: concurrent clients mixing clicks, boxes, drafts and batches over HTTP "
        "(p50/p95 per kind, errors, RSS over time)",
    )
    p.add_argument("--clients", type=int, default=8, help="with --load: clients (default 8)")
    p.add_argument(
        "--seconds", type=float, default=60.0, help="with --load: seconds of load (default 60)"
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_settings_options(p, ("engine", "backend"))
    p.set_defaults(func=_run_server)

    p = bench.add_parser(
        "annotate",
        help="pre-annotation images/min in process vs on 1, 2, ... Ray actors, first "
        "prediction, RSS per actor, overhead",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder (img/+gt/ or data_GT/+boundary_GT/); repeat for several",
    )
    p.add_argument(
        "--limit", type=int, default=12, help="first N images of each dataset (default 12)"
    )
    p.add_argument(
        "--workers", default="1,2", help="Ray actor counts, comma-separated (default 1,2)"
    )
    p.add_argument(
        "--coarse",
        default="lowres",
        choices=KINDS,
        help="the drafts' coarse-mask kind (default lowres)",
    )
    p.add_argument(
        "--batch", type=int, default=2, help="tasks queued per actor at a time (default 2)"
    )
    p.add_argument(
        "--cpus",
        type=int,
        help="CPUs shared out to each pool's actors (default: all of this machine's)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="chunks of the images each arm annotates in turn, order rotating (default 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the coarse drafts (default 0)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_settings_options(p, ("engine", "backend"))
    p.set_defaults(func=_run_annotate)
