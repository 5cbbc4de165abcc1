"""The tiny demo checkpoint `make up` installs into an empty store, so the first prompt
works offline. It is the project's own tiny SD (random weights), not a real model.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from services.common.proto.sdstack.v1 import common_pb2
from services.common.sd.model_registry import ModelRegistry, StoredModel
from services.generator.tiny_model import save_tiny_model

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "sdstack-tiny-demo"


def install_demo_model_if_empty(registry: ModelRegistry, tokenizer_dir: Path) -> StoredModel | None:
    """Stores the tiny demo checkpoint when the store has no checkpoint at all."""
    if registry.list([common_pb2.MODEL_KIND_CHECKPOINT]):
        return None
    with tempfile.TemporaryDirectory(prefix="sdstack-demo-") as folder:
        files = save_tiny_model(Path(folder), tokenizer_dir)
        model = registry.import_file(
            files.single_file,
            name=DEMO_MODEL_NAME,
            kind=common_pb2.MODEL_KIND_CHECKPOINT,
            file_format="safetensors",
        )
    log.info("installed the demo checkpoint %s", model.title)
    return model
