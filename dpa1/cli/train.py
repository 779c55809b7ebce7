"""``dpa1 train input.json [--restart CKPT | --init-model CKPT | --finetune MODEL] [-o DIR]``.

Also the entry point of multi-process training:
``torchrun --nproc_per_node N -m dpa1 train input.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dpa1.io.atomic import check_output_path
from dpa1.io.config import Config, load_settings
from dpa1.io.stat_file import is_hdf5


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a DeePMD-kit style input.json")
    p.add_argument("input", help="input.json (DeePMD-kit format)")
    start = p.add_mutually_exclusive_group()
    # -r/-i/-t: DeePMD-kit's short forms
    start.add_argument(
        "-r", "--restart", metavar="CKPT", help="continue a run from its checkpoint"
    )
    start.add_argument(
        "-i", "--init-model", metavar="CKPT", help="start from a checkpoint's weights only"
    )
    start.add_argument(
        "-t",
        "--finetune",
        metavar="MODEL",
        help="fine-tune a pretrained model (.pt or .dp) on this input's data",
    )
    p.add_argument(
        "--model-branch",
        default=None,
        help="the branch of a multi-task DeePMD-kit checkpoint given to --init-model or "
        "--finetune",
    )
    p.add_argument("-o", "--output", default=".", help="output directory (default: current)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument(
        "--skip-neighbor-stat",
        action="store_true",
        help="do not scan the data for sel (requires an integer sel)",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def close_logging() -> None:
    """Remove and close the handlers of the ``dpa1`` logger (train.log stays open otherwise)."""
    logger = logging.getLogger("dpa1")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def setup_logging(out_dir: Path, level: str, is_main: bool) -> None:
    logger = logging.getLogger("dpa1")
    logger.setLevel(level.upper())
    close_logging()
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(out_dir / "train.log")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(fh)
    logger.addHandler(sh)


def check_outputs(settings: Config, out_dir: Path) -> Path:
    """Refuse output locations that cannot be written before any data are read."""
    training = settings.training
    check_output_path(out_dir, "-o", directory=True)
    if training.save_dir:
        check_output_path(out_dir / training.save_dir, "training.save_dir", directory=True)
    check_output_path(out_dir / training.disp_file, "training.disp_file")
    if training.stat_file and training.stat_file_mode == "update":
        stat_file = out_dir / training.stat_file
        check_output_path(stat_file, "training.stat_file", directory=not is_hdf5(stat_file))
    if training.tensorboard:
        check_output_path(
            out_dir / training.tensorboard_log_dir, "training.tensorboard_log_dir", directory=True
        )
    return out_dir


def run(args: argparse.Namespace) -> int:
    from dpa1.train.distributed import cleanup, init_distributed, pick_device
    from dpa1.train.trainer import Trainer, write_out_json

    if args.model_branch is not None and not (args.init_model or args.finetune):
        raise ValueError("--model-branch picks the branch of the --init-model or --finetune "
                         "checkpoint; give one of them")
    settings = load_settings(args.input)
    out_dir = check_outputs(settings, Path(args.output))
    device = pick_device(args.device)
    info = init_distributed(device)
    setup_logging(out_dir, args.log_level, info.is_main)
    try:
        trainer = Trainer(
            settings,
            out_dir,
            input_dir=Path(args.input).resolve().parent,
            restart=Path(args.restart) if args.restart else None,
            init_model=Path(args.init_model) if args.init_model else None,
            finetune=Path(args.finetune) if args.finetune else None,
            model_branch=args.model_branch,
            device=device,
            dist_info=info,
            skip_neighbor_stat=args.skip_neighbor_stat,
        )
        if info.is_main:
            write_out_json(trainer.config, out_dir)
        ckpt = trainer.run()
        if info.is_main:
            logging.getLogger("dpa1").info("latest checkpoint: %s", ckpt)
    finally:
        cleanup(info)
        close_logging()
    return 0
