"""The one mapping between the generation request and its protobuf messages.

Fields of the same name are copied by one walker over the pydantic model's fields, so a new
setting needs a field in `settings.py` and one in the `.proto`, and nothing here. The rules of
the wire, written once:
- a proto3 scalar without presence that holds its zero value is unset: the model's default
  applies (`optional` fields, whose zero means something, are read when present);
- an enum value `PREFIX_SOME_NAME` is the model's literal `some_name`, `…_UNSPECIFIED` unset;
- a `float` is the decimal the client meant (0.1, not 0.10000000149).
What differs between the two shapes is spelled out below: the mode enum against the task
variant, the source image's slot per mode, `hires.enabled`, and the timeout's Duration.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from services.common.errors import FieldViolation, InvalidArgument
from services.common.generation.request import GenerationRequest, Preview, renamed, validated
from services.common.generation.settings import Settings
from services.common.generation.tasks import (
    OPTION_GROUPS,
    TASKS,
    HiresOptions,
    ImageSource,
    Inpaint,
    Task,
    Txt2Img,
)
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2

MODES = {
    generator_pb2.GENERATION_MODE_UNSPECIFIED: "txt2img",
    generator_pb2.GENERATION_MODE_TXT2IMG: "txt2img",
    generator_pb2.GENERATION_MODE_IMG2IMG: "img2img",
    generator_pb2.GENERATION_MODE_INPAINT: "inpaint",
    generator_pb2.GENERATION_MODE_UPSCALE: "upscale",
    generator_pb2.GENERATION_MODE_VARIATION: "variation",
}
IMAGE_SLOTS = {
    "img2img": "img2img.init_image",
    "inpaint": "img2img.init_image",
    "upscale": "upscale.image",
    "variation": "variation.source",
}
"""Where each mode's source image travels in a GenerateRequest."""
MASK_SLOT = "inpaint.mask"
T = TypeVar("T")


# -- the walker ---------------------------------------------------------------------------


def fields_of(message: Message, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `message` that `model` has, as data for `model.model_validate`."""
    data: dict[str, Any] = {}
    by_name = message.DESCRIPTOR.fields_by_name
    for name, info in model.model_fields.items():
        field = by_name.get(name)
        if field is None:
            continue
        value = getattr(message, name)
        nested = _model_in(info.annotation)
        if field.is_repeated:
            items = [fields_of(v, nested) if nested else v for v in value]
            if items:
                data[name] = items
        elif field.has_presence and not message.HasField(name):
            continue
        elif field.message_type is not None and nested is not None:
            data[name] = fields_of(value, nested)
        elif field.has_presence or value != field.default_value:
            read = _read_enum(field.enum_type, value) if field.enum_type else _scalar(field, value)
            if read is not None:
                data[name] = read
    return data


def fill(message: Message, value: BaseModel) -> None:
    """Sets every field of `message` that `value` has (None leaves it unset)."""
    by_name = message.DESCRIPTOR.fields_by_name
    for name in type(value).model_fields:
        field, item = by_name.get(name), getattr(value, name)
        if field is None or item is None:
            continue
        if field.is_repeated:
            _fill_repeated(getattr(message, name), item)
        elif isinstance(item, BaseModel):
            fill(getattr(message, name), item)
        elif field.enum_type is not None:
            setattr(message, name, _write_enum(field.enum_type, item))
        else:
            setattr(message, name, item)


def _fill_repeated(target: Any, items: list[Any]) -> None:
    for element in items:
        if isinstance(element, BaseModel):
            fill(target.add(), element)
        else:
            target.append(element)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `list[M]`, `M | None` or `M`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return float(f"{value:.7g}")
    return value


def _enum_prefix(enum: EnumDescriptor) -> str:
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def _read_enum(enum: EnumDescriptor, number: int) -> str | None:
    found = enum.values_by_number.get(number)
    if found is None or number == 0:
        return None if number == 0 else f"unknown value {number}"
    return found.name.removeprefix(_enum_prefix(enum)).lower()


def _write_enum(enum: EnumDescriptor, literal: str) -> int:
    return enum.values_by_name[_enum_prefix(enum) + literal.upper()].number


# -- GenerationParams ---------------------------------------------------------------------


def settings_from_proto(params: common_pb2.GenerationParams, path: str = "params") -> Settings:
    return validated(Settings, fields_of(params, Settings), path)


def settings_to_proto(settings: Settings) -> common_pb2.GenerationParams:
    message = common_pb2.GenerationParams()
    fill(message, settings)
    return message


# -- GenerateRequest ----------------------------------------------------------------------


def grpc_name(path: str, mode: str = "txt2img") -> str:
    """A domain path as the GenerateRequest names the field: `settings.width` →
    `params.width`, the task's `image` → its mode's slot, `task.hires.scale` → `hires.scale`."""
    head, _, rest = path.partition(".")
    if head == "settings":
        return f"params.{rest}" if rest else "params"
    if head != "task":
        return path
    if rest.split(".")[0] == "image":
        return IMAGE_SLOTS.get(mode, "image") + rest.removeprefix("image")
    if rest.split(".")[0] == "mask":
        return MASK_SLOT + rest.removeprefix("mask")
    return rest or "mode"


def request_from_proto(request: generator_pb2.GenerateRequest) -> GenerationRequest:
    """The request a GenerateRequest asks for; InvalidArgument naming its proto fields."""
    mode = MODES.get(request.mode)
    if mode is None:
        raise InvalidArgument("mode", "unknown generation mode")
    broken: list[FieldViolation] = []
    settings = _collect(broken, lambda: settings_from_proto(request.params))
    task = _collect(broken, lambda: _task_from_proto(request, mode))
    preview = None
    if request.preview.enabled:
        data = fields_of(request.preview, Preview)
        preview = _collect(broken, lambda: validated(Preview, data, "preview"))
    timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
    job = {
        "preview": preview,
        "priority": request.priority,
        "timeout_seconds": timeout,
        "request_id": request.request_id,
        "owner": request.owner,
    }
    checked = _collect(broken, lambda: validated(GenerationRequest, job))
    if broken or checked is None:
        error = InvalidArgument.many(broken)
        raise renamed(error, lambda path: "timeout" if path == "timeout_seconds" else path)
    return checked.model_copy(update={"settings": settings, "task": task})


def request_to_proto(request: GenerationRequest) -> generator_pb2.GenerateRequest:
    task = request.task
    message = generator_pb2.GenerateRequest(
        request_id=request.request_id,
        mode=next(number for number, name in MODES.items() if name == task.mode and number),
        params=settings_to_proto(request.settings),
        priority=request.priority,
        owner=request.owner,
    )
    for group in OPTION_GROUPS:
        options = getattr(task, group, None)
        if options is not None:
            fill(getattr(message, group), options)
    if isinstance(task, Txt2Img) and task.hires is not None:
        message.hires.enabled = True
    if not isinstance(task, Txt2Img):
        _image_to(message, IMAGE_SLOTS[task.mode], task.image)
    if isinstance(task, Inpaint):
        _image_to(message, MASK_SLOT, task.mask)
    if request.preview is not None:
        message.preview.enabled = True
        fill(message.preview, request.preview)
    if request.timeout_seconds is not None:
        message.timeout.FromNanoseconds(int(request.timeout_seconds * 1e9))
    return message


def _collect(broken: list[FieldViolation], build: Callable[[], T]) -> T | None:
    try:
        return build()
    except InvalidArgument as error:
        broken.extend(error.violations)
        return None


def _task_from_proto(request: generator_pb2.GenerateRequest, mode: str) -> Task:
    model = TASKS[mode]
    unused = [
        FieldViolation(group, f"is not used by mode {mode}")
        for group in OPTION_GROUPS
        if group not in model.model_fields and _is_set(request, group)
    ]
    data: dict[str, Any] = {"mode": mode}
    for group in OPTION_GROUPS:
        if group in model.model_fields and group != "hires":
            options = _model_in(model.model_fields[group].annotation)
            assert options is not None
            data[group] = fields_of(getattr(request, group), options)
    if mode == "txt2img" and request.hires.enabled:
        data["hires"] = fields_of(request.hires, HiresOptions)
    if mode in IMAGE_SLOTS:
        _image_from(data, "image", request, IMAGE_SLOTS[mode])
    if mode == "inpaint":
        _image_from(data, "mask", request, MASK_SLOT)
    try:
        task = validated(model, data, "task")
    except InvalidArgument as error:
        unused.extend(renamed(error, lambda path: grpc_name(path, mode)).violations)
    if unused:
        raise InvalidArgument.many(unused)
    return task  # type: ignore[return-value]


def _is_set(request: generator_pb2.GenerateRequest, group: str) -> bool:
    if group == "hires":
        return request.hires.enabled
    return request.HasField(group) and getattr(request, group).ByteSize() > 0


def _image_from(
    data: dict[str, Any], name: str, request: generator_pb2.GenerateRequest, slot: str
) -> None:
    group, field = slot.split(".")
    ref: common_pb2.ImageRef = getattr(getattr(request, group), field)
    source = ref.WhichOneof("source")
    data[name] = {source: getattr(ref, source)} if source else {}


def _image_to(message: generator_pb2.GenerateRequest, slot: str, image: ImageSource) -> None:
    group, field = slot.split(".")
    ref: common_pb2.ImageRef = getattr(getattr(message, group), field)
    if image.data:
        ref.data = image.data
    elif image.image_id:
        ref.image_id = image.image_id
    elif image.object_key:
        ref.object_key = image.object_key
