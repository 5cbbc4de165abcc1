"""Diffusers folders as checkpoints: uploaded as a zip, stored as files plus a manifest,
fetched back into the local cache, and drawing the same pictures as the single file."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.archives import zip_folder
from services.common.clients import GeneratorClient
from services.common.errors import RemoteError
from services.common.object_store import MODELS_BUCKET
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from services.generator.tiny_model import TinyModelFiles
from tests.integration.test_cli import sdstack
from tests.stack_fixtures import RunningStack

pytestmark = [pytest.mark.integration]

CHECKPOINT = common_pb2.MODEL_KIND_CHECKPOINT


@pytest.fixture
def generator(running_stack: RunningStack) -> GeneratorClient:
    with GeneratorClient(running_stack.settings.target("generator")) as client:
        yield client


def _pixels(client: GeneratorClient, model: str) -> np.ndarray:
    params = common_pb2.GenerationParams(
        prompt="a courtyard with a fig tree", model=model, seed=21, width=64, height=64, steps=3
    )
    request = generator_pb2.GenerateRequest(params=params)
    (image,) = client.generate_images(request)
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=np.int16)


def _stored_keys(stack: RunningStack, name: str) -> list[str]:
    """The model's manifest and its files' keys."""
    listed = stack.object_store().list(MODELS_BUCKET, prefix=f"checkpoints/{name}")
    mine = (f"checkpoints/{name}.diffusers", f"checkpoints/{name}/")
    return sorted(entry.key for entry in listed if entry.key.startswith(mine))


def _versions(keys: list[str]) -> set[str]:
    """Version folders among `checkpoints/<name>/<version>/<file>` keys."""
    return {key.split("/")[2] for key in keys if key.count("/") >= 3}


def _import_zip(client: GeneratorClient, archive: Path, name: str) -> common_pb2.ModelInfo:
    return client.import_model(archive, name=name, kind=CHECKPOINT, file_format="diffusers")


def test_a_folder_draws_what_the_single_file_draws(
    running_stack: RunningStack,
    generator: GeneratorClient,
    tiny_model_files: TinyModelFiles,
) -> None:
    as_folder = sdstack(
        running_stack, "models", "import", str(tiny_model_files.diffusers_dir), "--name", "tiny-dir"
    )
    assert as_folder.returncode == 0, as_folder.stderr
    assert "imported tiny-dir.diffusers [" in as_folder.stdout
    single = tiny_model_files.single_file
    generator.import_model(single, name="tiny-1-file", kind=CHECKPOINT, file_format="safetensors")

    listed = {m.name: m for m in generator.list_models(CHECKPOINT).models}
    assert listed["tiny-dir"].format == "diffusers"
    assert len(listed["tiny-dir"].short_hash) == 10
    difference = np.abs(_pixels(generator, "tiny-dir") - _pixels(generator, "tiny-1-file"))
    assert difference.max() <= 1


def test_overwriting_a_folder_leaves_only_the_new_files(
    running_stack: RunningStack,
    generator: GeneratorClient,
    tiny_model_files: TinyModelFiles,
    tmp_path: Path,
) -> None:
    archive = zip_folder(tiny_model_files.diffusers_dir, tmp_path / "tiny.zip")
    first = _import_zip(generator, archive, "tiny-replaced")
    before = _stored_keys(running_stack, "tiny-replaced")
    with pytest.raises(RemoteError) as raised:
        _import_zip(generator, archive, "tiny-replaced")
    assert raised.value.reason == "ALREADY_EXISTS"

    second = generator.import_model(
        archive, name="tiny-replaced", kind=CHECKPOINT, file_format="diffusers", overwrite=True
    )
    after = _stored_keys(running_stack, "tiny-replaced")
    assert len(after) == len(before)
    assert len(_versions(before)) == len(_versions(after)) == 1
    assert _versions(before) != _versions(after)
    assert second.sha256 == first.sha256  # new version folder, the same files

    deleted = generator.stub.DeleteModel(
        generator_pb2.DeleteModelRequest(name="tiny-replaced", kind=CHECKPOINT)
    )
    assert deleted.deleted
    assert _stored_keys(running_stack, "tiny-replaced") == []


def _folder_hash(folder: Path) -> str:
    """A folder's hash by the documented rule, from the files on disk: the sha256 of
    `sha256sum`'s listing of its files (`<sha256>  <relative path>` lines) sorted by path."""
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))
    listing = "".join(
        f"{hashlib.sha256((folder / path).read_bytes()).hexdigest()}  {path}\n"
        for path in paths
        if (folder / path).is_file()
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def test_the_same_folder_imported_twice_has_the_same_hash(
    running_stack: RunningStack,
    generator: GeneratorClient,
    tiny_model_files: TinyModelFiles,
    tmp_path: Path,
) -> None:
    """A folder's hash is its files', not its upload's: the same folder imported again,
    over itself or under another name, is the same model, and a manifest written before
    the hash was recorded in it gets the same hash from its file list."""
    archive = zip_folder(tiny_model_files.diffusers_dir, tmp_path / "tiny.zip")
    expected = _folder_hash(tiny_model_files.diffusers_dir)
    store = running_stack.object_store()
    try:
        first = _import_zip(generator, archive, "tiny-hashed")
        again = generator.import_model(
            archive, name="tiny-hashed", kind=CHECKPOINT, file_format="diffusers", overwrite=True
        )
        other = _import_zip(generator, archive, "tiny-hashed-too")
        assert first.sha256 == again.sha256 == other.sha256 == expected
        assert first.short_hash == expected[:10]
        assert first.title == f"tiny-hashed.diffusers [{expected[:10]}]"

        key = "checkpoints/tiny-hashed-too.diffusers"
        manifest = json.loads(store.get_bytes(MODELS_BUCKET, key))
        del manifest["sha256"]
        store.put(MODELS_BUCKET, key, json.dumps(manifest).encode())  # no recorded hash
        listed = {m.name: m.sha256 for m in generator.list_models(CHECKPOINT).models}
        assert (listed["tiny-hashed"], listed["tiny-hashed-too"]) == (expected, expected)
    finally:
        for name in ("tiny-hashed", "tiny-hashed-too"):
            generator.stub.DeleteModel(generator_pb2.DeleteModelRequest(name=name, kind=CHECKPOINT))
        store.close()


def _zip_with(tmp_path: Path, source: Path, extra: dict[str, bytes]) -> Path:
    archive = zip_folder(source, tmp_path / "upload.zip")
    with zipfile.ZipFile(archive, "a") as bundle:
        for name, data in extra.items():
            bundle.writestr(name, data)
    return archive


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"unet/diffusion_pytorch_model.bin": b"pickle"}, "'unet/diffusion_pytorch_model.bin'"),
        ({"../outside.json": b"{}"}, "'../outside.json' must be a plain relative path"),
        ({"/etc/cron.json": b"{}"}, "'/etc/cron.json' must be a plain relative path"),
    ],
)
def test_unsafe_folders_are_refused_and_nothing_is_stored(
    running_stack: RunningStack,
    generator: GeneratorClient,
    tiny_model_files: TinyModelFiles,
    tmp_path: Path,
    extra: dict[str, bytes],
    says: str,
) -> None:
    archive = _zip_with(tmp_path, tiny_model_files.diffusers_dir, extra)
    with pytest.raises(RemoteError) as raised:
        _import_zip(generator, archive, "tiny-unsafe")
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert says in str(raised.value)
    assert _stored_keys(running_stack, "tiny-unsafe") == []


def test_a_zip_without_model_index_is_refused(
    generator: GeneratorClient, tiny_model_files: TinyModelFiles, tmp_path: Path
) -> None:
    archive = zip_folder(tiny_model_files.diffusers_dir / "unet", tmp_path / "unet-only.zip")
    with pytest.raises(RemoteError) as raised:
        _import_zip(generator, archive, "tiny-no-index")
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert "model_index.json" in str(raised.value)
