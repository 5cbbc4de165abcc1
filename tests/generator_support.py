"""What the generator's gRPC tests share: a request with small settings, and its metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from services.common.clients import GeneratorClient
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2
from tests.stack_fixtures import RunningStack

SIZE = 64
PARAMS = {"prompt": "a pavilion", "seed": 7, "width": SIZE, "height": SIZE, "steps": 4}
"""A 4-step 64² picture: quick on the tiny model."""


def generate(generator: GeneratorClient, **fields: object) -> list[common_pb2.GeneratedImage]:
    """The images of one GenerateRequest: `PARAMS` updated by `params`, the other fields the
    request's own (mode, option groups)."""
    params = PARAMS | fields.pop("params", {})  # type: ignore[operator]
    request = generator_pb2.GenerateRequest(
        params=common_pb2.GenerationParams(**params),
        **fields,  # type: ignore[arg-type]
    )
    return generator.generate_images(request)


def metric(running_stack: RunningStack, name: str, **labels: str) -> float:
    """The generator's counter `name`, summed over the samples with these labels."""
    s = running_stack.settings
    url = f"http://{s.host}:{s.generator_metrics_port}/metrics"
    with urllib.request.urlopen(url) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
