r"""The models the store holds: checkpoints, VAEs, upscalers, taggers (bucket `models`)
and LoRAs (bucket `loras`). The generator is the one writer of both buckets.

Object keys: `checkpoints/<name>.<ext>`, `vae/<name>.<ext>`, `upscalers/<name>.<ext>`,
`taggers/<name>.<ext>` in `models`; `<name>.safetensors` in `loras`.

Hashes, as the ecosystem computes them:

- A single file (checkpoint, VAE, ...) is identified by the sha256 of the whole file, which
  the object store records with every object; its short hash is the first 10 hex (A1111's
  "new" model hash).
- A LoRA is also known by A1111's "addnet" hash (kohya's `addnet_hash_safetensors`): the
  sha256 of the file's bytes after the safetensors header (the 8-byte little-endian header
  length n, then n bytes of JSON header), so re-saving the same tensors with other metadata
  keeps it. A1111 writes its first 12 hex in `Lora hashes` and Civitai looks LoRAs up by it
  (AutoV3); a LoRA that is not a safetensors file falls back to the sha256 of the whole
  file, as A1111 does. It is computed on import and kept in the object's user metadata
  (`addnet-sha256`), so listings cost nothing more; a LoRA put into the bucket by another
  tool is hashed from the store once (ranged reads of the bytes after its header) and
  remembered for this process by its ETag. A1111 prefers a `sshs_model_hash` found in the
  file's own metadata; sdstack hashes the bytes instead, which gives the same value for
  every file whose claim is true and the right one for a file whose claim is stale.
- A diffusers folder is uploaded as a zip and stored as its files under
  `checkpoints/<name>/<version>/` plus a manifest `checkpoints/<name>.diffusers` (JSON: each
  file's path, size and sha256) written last: a half-finished upload has no manifest and so
  is no model. The folder's sha256 is that of the `sha256sum` listing of its files: one
  line `<sha256 of the file>  <path relative to the folder, with />` per file, sorted by
  path (code points, which is byte order in UTF-8), each ending in `\n`, in UTF-8. It
  depends on the files' contents and names only, so the same folder imported twice (or
  under another name) has the same hash, and anyone can recompute it with
  `find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`
  inside the folder. Its first 10 hex are the short hash shown for it. It is kept in the
  manifest and in the manifest object's user metadata (`folder-sha256`); a manifest
  without it (written before it was) is hashed from its file list.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.common.archives import extract_zip, safe_member_path
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.generation.settings import NAME_PATTERN
from services.common.object_store import LORAS_BUCKET, MODELS_BUCKET, ObjectInfo, ObjectStore
from services.common.proto.sdstack.v1 import common_pb2

Kind = int  # a common_pb2.ModelKind value

_PLACES: dict[Kind, tuple[str, str]] = {
    common_pb2.MODEL_KIND_CHECKPOINT: (MODELS_BUCKET, "checkpoints/"),
    common_pb2.MODEL_KIND_VAE: (MODELS_BUCKET, "vae/"),
    common_pb2.MODEL_KIND_UPSCALER: (MODELS_BUCKET, "upscalers/"),
    common_pb2.MODEL_KIND_TAGGER: (MODELS_BUCKET, "taggers/"),
    common_pb2.MODEL_KIND_VAE_APPROX: (MODELS_BUCKET, "vae-approx/"),
    common_pb2.MODEL_KIND_LORA: (LORAS_BUCKET, ""),
}
KINDS: dict[str, Kind] = {
    "checkpoint": common_pb2.MODEL_KIND_CHECKPOINT,
    "vae": common_pb2.MODEL_KIND_VAE,
    "lora": common_pb2.MODEL_KIND_LORA,
    "upscaler": common_pb2.MODEL_KIND_UPSCALER,
    "tagger": common_pb2.MODEL_KIND_TAGGER,
    "vae_approx": common_pb2.MODEL_KIND_VAE_APPROX,
}
"""The kinds by the names the HTTP API and the command line use."""
FORMATS: dict[Kind, frozenset[str]] = {
    common_pb2.MODEL_KIND_CHECKPOINT: frozenset({"safetensors", "ckpt", "diffusers"}),
    common_pb2.MODEL_KIND_VAE: frozenset({"safetensors", "ckpt", "pt"}),
    common_pb2.MODEL_KIND_UPSCALER: frozenset({"pth", "safetensors"}),
    common_pb2.MODEL_KIND_TAGGER: frozenset({"onnx"}),
    common_pb2.MODEL_KIND_VAE_APPROX: frozenset({"safetensors", "pth", "pt"}),
    common_pb2.MODEL_KIND_LORA: frozenset({"safetensors"}),
}
DIFFUSERS = "diffusers"
# Weights only as safetensors: a folder's `.bin` files would be pickles.
_FOLDER_SUFFIXES = frozenset({".json", ".txt", ".safetensors"})
_FOLDER_MAX_BYTES = 16 << 30
_FOLDER_MAX_FILES = 256
_MAX_METADATA_HEADER_BYTES = 16 << 20
ADDNET_SHA256_META = "addnet-sha256"
"""User metadata of a stored LoRA: its A1111 addnet hash (64 hex)."""
FOLDER_SHA256_META = "folder-sha256"
"""User metadata of a diffusers manifest: the folder's sha256 (64 hex)."""
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK_BYTES = 8 << 20
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class StoredModel:
    name: str
    kind: Kind
    bucket: str
    key: str
    sha256: str
    size_bytes: int
    format: str
    created_at: datetime | None
    addnet_sha256: str = ""
    """A LoRA's A1111 addnet hash (sha256 of its bytes after the safetensors header);
    "" for other kinds and for LoRAs that are not safetensors files."""

    @property
    def short_hash(self) -> str:
        """A1111's short hash: for a LoRA the first 12 hex of its addnet hash (of the
        file's sha256 when it has none), as `Lora hashes` and Civitai use it; for every
        other kind the first 10 hex of the file's sha256."""
        if self.kind == common_pb2.MODEL_KIND_LORA:
            return (self.addnet_sha256 or self.sha256)[:12]
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name}.{self.format} [{self.short_hash}]"


def check_model_name(name: str, field_name: str = "name") -> str:
    if not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            field_name, "1-128 characters of A-Z a-z 0-9 space _ . ( ) + -, not starting with ."
        )
    return name


def check_kind(kind: Kind, field_name: str = "kind") -> Kind:
    if kind not in _PLACES:
        *others, last = (name.upper() for name in KINDS)
        raise InvalidArgument(field_name, f"must be {', '.join(others)} or {last}")
    return kind


Validator = Callable[[Path, Kind, str], None]


class ModelRegistry:
    """Lists, finds, imports and deletes model files in the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._metadata: dict[tuple[str, str, str, int], dict[str, str]] = {}
        self._hashed: dict[tuple[str, str, str], str] = {}
        """Hashes computed from the store for objects that do not carry them, by
        (bucket, key, ETag): each is read once per process."""

    def file_metadata(self, model: StoredModel) -> dict[str, str]:
        """The `__metadata__` of a stored `.safetensors` file (kohya's `ss_*` for LoRAs),
        read with two ranged GETs and remembered by object and content (a file another tool
        put in the bucket has no recorded sha256); {} when it has none or cannot be read."""
        if model.format != "safetensors":
            return {}
        key = (model.bucket, model.key, model.sha256, model.size_bytes)
        if key not in self._metadata:
            self._metadata[key] = self._read_metadata(model)
        return self._metadata[key]

    def _read_metadata(self, model: StoredModel) -> dict[str, str]:
        prefix = self.store.get_range(model.bucket, model.key, 0, 8)
        if len(prefix) < 8:
            return {}
        (length,) = struct.unpack("<Q", prefix)
        if length > min(model.size_bytes - 8, _MAX_METADATA_HEADER_BYTES):
            return {}
        try:
            header = json.loads(self.store.get_range(model.bucket, model.key, 8, length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(metadata, dict):
            return {}
        return {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}

    def list(self, kinds: Iterable[Kind] | None = None) -> list[StoredModel]:
        models = []
        for kind in kinds or _PLACES:
            bucket, prefix = _PLACES[kind]
            for entry in self.store.list(bucket, prefix=prefix):
                model = self._from_key(kind, entry.key)
                if model is not None:
                    models.append(model)
        return sorted(models, key=lambda m: (m.kind, m.name.lower()))

    def find(self, kind: Kind, name: str) -> StoredModel:
        """The model stored under `name`; its safetensors file first (the common case, so
        one lookup in the store, and the safe format where a name has several)."""
        _, prefix = _PLACES[check_kind(kind)]
        if _NAME.match(name):
            for file_format in sorted(FORMATS[kind], key=lambda f: (f != "safetensors", f)):
                try:
                    model = self._from_key(kind, f"{prefix}{name}.{file_format}")
                except NotFound:
                    continue
                if model is not None:
                    return model
        raise NotFound(common_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower(), name)

    def import_file(
        self,
        path: Path,
        *,
        name: str,
        kind: Kind,
        file_format: str,
        overwrite: bool = False,
        validate: Validator | None = None,
    ) -> StoredModel:
        """Validates a local file, then stores it under its name (sha256 recorded)."""
        check_model_name(name)
        check_kind(kind)
        if file_format not in FORMATS[kind]:
            allowed = ", ".join(sorted(FORMATS[kind]))
            raise InvalidArgument("format", f"must be one of {allowed} for this kind")
        if not overwrite and self._exists(kind, name):
            raise AlreadyExists(f"a model named {name!r} already exists; set overwrite")
        if file_format == DIFFUSERS:
            return self._import_folder(path, name, validate)
        if validate is not None:
            validate(path, kind, file_format)
        bucket, prefix = _PLACES[kind]
        metadata: dict[str, str] = {}
        if kind == common_pb2.MODEL_KIND_LORA and file_format == "safetensors":
            metadata[ADDNET_SHA256_META] = addnet_sha256(path)
        self.store.put_file(bucket, f"{prefix}{name}.{file_format}", path, metadata=metadata)
        self._drop_other_formats(kind, name, keep=file_format)
        return self.find(kind, name)

    def _import_folder(self, archive: Path, name: str, validate: Validator | None) -> StoredModel:
        """Unpacks a zipped diffusers folder, checks it, stores its files, then the manifest."""
        kind = common_pb2.MODEL_KIND_CHECKPOINT
        with tempfile.TemporaryDirectory(prefix="sdstack-import-") as scratch:
            unpacked = Path(scratch) / "folder"
            extract_zip(
                archive,
                unpacked,
                field_name="file",
                max_bytes=_FOLDER_MAX_BYTES,
                max_files=_FOLDER_MAX_FILES,
                allowed_suffixes=_FOLDER_SUFFIXES,
            )
            root = _model_index_folder(unpacked)
            if validate is not None:
                validate(root, kind, DIFFUSERS)
            folder_prefix = f"checkpoints/{name}/{uuid.uuid4().hex}/"
            files = []
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = path.relative_to(root).as_posix()
                info = self.store.put_file(MODELS_BUCKET, folder_prefix + relative, path)
                files.append({"path": relative, "size": info.size, "sha256": info.sha256})
        folder_sha256 = folder_files_sha256(files)
        manifest = {
            "format": DIFFUSERS,
            "prefix": folder_prefix,
            "files": files,
            "sha256": folder_sha256,
        }
        self.store.put(
            MODELS_BUCKET,
            f"checkpoints/{name}.{DIFFUSERS}",
            json.dumps(manifest, sort_keys=True).encode(),
            content_type="application/json",
            metadata={FOLDER_SHA256_META: folder_sha256},
        )
        self._delete_folder_files(name, keep=folder_prefix)
        self._drop_other_formats(kind, name, keep=DIFFUSERS)
        return self.find(kind, name)

    def local_copy(self, model: StoredModel, files_dir: Path) -> tuple[Path, bool]:
        """The model on local disk under `files_dir`, named by its sha256 so a renamed or
        re-uploaded model is never fetched twice; (path, whether it was fetched now).
        Downloads are checked against the recorded sha256 and appear whole or not at all."""
        path = files_dir / f"{model.sha256 or model.name}.{model.format}"
        if path.exists():
            return path, False
        files_dir.mkdir(parents=True, exist_ok=True)
        if model.format == DIFFUSERS:
            self.download_folder(model, path)
        else:
            self.store.download(model.bucket, model.key, path)
        return path, True

    def download_folder(self, model: StoredModel, dest: Path) -> None:
        """Fetches a stored diffusers folder into `dest`, which appears whole or not at all."""
        manifest = json.loads(self.store.get_bytes(model.bucket, model.key))
        staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            for entry in manifest["files"]:
                relative = str(safe_member_path(entry["path"], "manifest"))
                self.store.download(model.bucket, manifest["prefix"] + relative, staging / relative)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _drop_other_formats(self, kind: Kind, name: str, keep: str) -> None:
        """After an overwrite in another format the old file goes: one name, one model."""
        bucket, prefix = _PLACES[kind]
        for file_format in FORMATS[kind] - {keep}:
            self.store.delete(bucket, f"{prefix}{name}.{file_format}")
        if DIFFUSERS in FORMATS[kind] and keep != DIFFUSERS:
            self._delete_folder_files(name)

    def _delete_folder_files(self, name: str, keep: str = "") -> None:
        """Removes the files of a folder model's other versions (all of them by default)."""
        for entry in self.store.list(MODELS_BUCKET, prefix=f"checkpoints/{name}/"):
            if not keep or not entry.key.startswith(keep):
                self.store.delete(MODELS_BUCKET, entry.key)

    def import_stream(self, chunks: Iterable[bytes], **kwargs: object) -> StoredModel:
        """Spools an upload to a temporary file, then `import_file`s it."""
        with tempfile.TemporaryDirectory(prefix="sdstack-import-") as folder:
            path = Path(folder) / "upload"
            with path.open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            return self.import_file(path, **kwargs)  # type: ignore[arg-type]

    def delete(self, kind: Kind, name: str) -> bool:
        try:
            model = self.find(kind, name)
        except NotFound:
            return False
        self.store.delete(model.bucket, model.key)
        if model.format == DIFFUSERS:
            self._delete_folder_files(model.name)
        return True

    def _exists(self, kind: Kind, name: str) -> bool:
        try:
            self.find(kind, name)
        except NotFound:
            return False
        return True

    def _from_key(self, kind: Kind, key: str) -> StoredModel | None:
        bucket, prefix = _PLACES[kind]
        stem, _, file_format = key.removeprefix(prefix).rpartition(".")
        if "/" in stem or file_format not in FORMATS[kind]:
            return None
        info = self.store.stat(bucket, key)
        sha256, addnet = info.sha256, ""
        if file_format == DIFFUSERS:
            sha256 = self._folder_sha256(info)
        elif kind == common_pb2.MODEL_KIND_LORA and file_format == "safetensors":
            addnet = self._addnet_sha256(info)
        return StoredModel(
            name=stem,
            kind=kind,
            bucket=bucket,
            key=key,
            sha256=sha256,
            size_bytes=info.size,
            format=file_format,
            created_at=info.last_modified,
            addnet_sha256=addnet,
        )

    def _folder_sha256(self, manifest: ObjectInfo) -> str:
        """The folder's hash from its manifest's user metadata, else from its file list."""
        recorded = manifest.metadata.get(FOLDER_SHA256_META, "")
        if _SHA256_HEX.match(recorded):
            return recorded
        return self._remembered(manifest, self._hash_manifest)

    def _hash_manifest(self, manifest: ObjectInfo) -> str:
        try:
            files = json.loads(self.store.get_bytes(manifest.bucket, manifest.key))["files"]
            return folder_files_sha256(files)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return manifest.sha256  # not a manifest sdstack wrote: at least its bytes

    def _addnet_sha256(self, lora: ObjectInfo) -> str:
        """The LoRA's addnet hash from its user metadata, else read from the store."""
        recorded = lora.metadata.get(ADDNET_SHA256_META, "")
        if _SHA256_HEX.match(recorded):
            return recorded
        return self._remembered(lora, self._hash_after_header)

    def _hash_after_header(self, lora: ObjectInfo) -> str:
        """The addnet hash of a stored file, in ranged reads of a few MiB (never all of
        it in memory)."""
        prefix = self.store.get_range(lora.bucket, lora.key, 0, 8) if lora.size >= 8 else b""
        offset = _tensor_data_offset(prefix, lora.size)
        digest = hashlib.sha256()
        while offset < lora.size:
            chunk = self.store.get_range(lora.bucket, lora.key, offset, _HASH_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def _remembered(self, info: ObjectInfo, compute: Callable[[ObjectInfo], str]) -> str:
        """`compute(info)`, once per version of the object (its ETag) in this process."""
        version = (info.bucket, info.key, info.etag or info.sha256)
        if version not in self._hashed:
            self._hashed[version] = compute(info)
        return self._hashed[version]


def addnet_sha256(path: Path) -> str:
    """A1111's addnet hash of a local LoRA file (kohya's `addnet_hash_safetensors`): the
    sha256 of what follows its safetensors header; of the whole file when it does not
    start with a header length that fits in it."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        prefix = file.read(8)
        file.seek(_tensor_data_offset(prefix, path.stat().st_size))
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_data_offset(prefix: bytes, size: int) -> int:
    """Where a safetensors file of `size` bytes starting with `prefix` keeps its tensors:
    after the 8-byte little-endian header length n and the n header bytes; 0 when
    `prefix` is no such length."""
    if len(prefix) < 8:
        return 0
    (length,) = struct.unpack("<Q", prefix[:8])
    return 8 + length if 8 + length <= size else 0


def folder_files_sha256(files: Iterable[dict[str, object]]) -> str:
    """A diffusers folder's hash from its files' `path` and `sha256` (see the module
    docstring): the sha256 of their `sha256sum` listing, sorted by path."""
    entries = sorted((str(f["path"]), str(f["sha256"])) for f in files)
    listing = "".join(f"{sha256}  {path}\n" for path, sha256 in entries)
    return hashlib.sha256(listing.encode()).hexdigest()


def _model_index_folder(unpacked: Path) -> Path:
    """The folder holding `model_index.json`: the archive's root or its one top folder."""
    if (unpacked / "model_index.json").is_file():
        return unpacked
    tops = list(unpacked.iterdir())
    if len(tops) == 1 and (tops[0] / "model_index.json").is_file():
        return tops[0]
    raise InvalidArgument("file", "a diffusers folder needs model_index.json at its top")
