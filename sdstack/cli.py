"""The `sdstack` command line.

sdstack up                       start the whole stack (what `make up` runs)
sdstack models list              models in the store
sdstack models import PATH       upload a checkpoint (file or diffusers folder), VAE, LoRA
                                 or upscaler
sdstack models make-tiny DIR     build the tiny SD model (diffusers folder + single file)
sdstack generate "prompt"        make images over gRPC and write the PNGs
sdstack gallery import FOLDER    import an A1111 output folder into the gallery
sdstack gallery reconcile        repair what a crash left between objects and records
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from sdstack.gallery_cli import add_gallery_commands
from services.common.archives import zip_folder
from services.common.clients import GeneratorClient
from services.common.config import Settings, load_settings
from services.common.errors import ConfigError, SdstackError
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.common.sd.model_registry import KINDS


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def cmd_up(settings: Settings, _args: argparse.Namespace) -> int:
    from sdstack.launcher import run_stack

    return run_stack(settings)


def cmd_models_list(settings: Settings, args: argparse.Namespace) -> int:
    with GeneratorClient(settings.target("generator")) as client:
        reply = client.list_models(KINDS[args.kind] if args.kind else 0)
    for model in reply.models:
        kind = common_pb2.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_").lower()
        default = " (default)" if model.name == reply.default_checkpoint else ""
        _out(f"{kind:<11} {model.title:<60} {model.size_bytes / 2**20:9.1f} MiB{default}")
    return 0


def cmd_models_import(settings: Settings, args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix="sdstack-upload-") as scratch:
            archive = zip_folder(path, Path(scratch) / f"{path.name}.zip")
            return _upload_model(settings, args, archive, name=path.name, file_format="diffusers")
    if not path.is_file():
        raise ConfigError("PATH", f"{path} is not a file or a diffusers folder")
    file_format = path.suffix.lstrip(".").lower()
    return _upload_model(settings, args, path, name=path.stem, file_format=file_format)


def _upload_model(
    settings: Settings, args: argparse.Namespace, path: Path, *, name: str, file_format: str
) -> int:
    with GeneratorClient(settings.target("generator")) as client:
        size = path.stat().st_size
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"uploading {path.name}") as bar:
            model = client.import_model(
                path,
                on_chunk=bar.update,
                name=args.name or name,
                kind=KINDS[args.kind],
                file_format=file_format,
                overwrite=args.overwrite,
            )
    _out(f"imported {model.title} ({model.sha256})")
    return 0


def cmd_models_make_tiny(settings: Settings, args: argparse.Namespace) -> int:
    from services.generator.tiny_model import save_tiny_model

    tokenizer = settings.resolved_clip_tokenizer_dir
    files = save_tiny_model(args.out, tokenizer, seed=args.seed)
    _out(f"diffusers folder: {files.diffusers_dir}\nsingle file:      {files.single_file}")
    return 0


def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    params = common_pb2.GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative,
        model=args.model,
        sampler=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg,
        width=args.width,
        height=args.height,
        seed=args.seed,
        batch_size=args.batch,
    )
    request = generator_pb2.GenerateRequest(params=params)
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        GeneratorClient(settings.target("generator")) as client,
        tqdm(total=args.steps, desc="generating", unit="step") as bar,
    ):
        for event in client.generate(request):
            if event.HasField("progress"):
                bar.n = (
                    event.progress.job_no - 1
                ) * event.progress.total_steps + event.progress.step
                bar.refresh()
            elif event.HasField("result"):
                for image in event.result.images:
                    path = args.out / f"{event.request_id}-{image.index}-{image.seed}.png"
                    path.write_bytes(image.png)
                    tqdm.write(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdstack", description="Self-hosted Stable Diffusion.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the whole stack").set_defaults(run=cmd_up)

    models = commands.add_parser("models", help="models in the store").add_subparsers(
        dest="models_command", required=True
    )
    listing = models.add_parser("list", help="list models")
    listing.add_argument("--kind", choices=sorted(KINDS))
    listing.set_defaults(run=cmd_models_list)
    importing = models.add_parser("import", help="upload a model file or diffusers folder")
    importing.add_argument("path", type=Path)
    importing.add_argument("--kind", choices=sorted(KINDS), default="checkpoint")
    importing.add_argument("--name", help="name to store it under (default: its stem)")
    importing.add_argument("--overwrite", action="store_true")
    importing.set_defaults(run=cmd_models_import)
    tiny = models.add_parser("make-tiny", help="build the tiny SD test model")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=cmd_models_make_tiny)

    generate = commands.add_parser("generate", help="make images and write PNGs")
    generate.add_argument("prompt")
    generate.add_argument("--negative", default="")
    generate.add_argument("--model", default="")
    generate.add_argument("--sampler", default="Euler a")
    generate.add_argument("--steps", type=int, default=20)
    generate.add_argument("--cfg", type=float, default=7.0)
    generate.add_argument("--width", type=int, default=512)
    generate.add_argument("--height", type=int, default=512)
    generate.add_argument("--seed", type=int, default=-1)
    generate.add_argument("--batch", type=int, default=1)
    generate.add_argument("--out", type=Path, default=Path("outputs"))
    generate.set_defaults(run=cmd_generate)
    add_gallery_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return args.run(settings, args)
    except (ConfigError, SdstackError) as error:
        sys.stderr.write(f"sdstack: {error}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
