import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_MODE_UNSPECIFIED: _ClassVar[GenerationMode]
    GENERATION_MODE_TXT2IMG: _ClassVar[GenerationMode]
    GENERATION_MODE_IMG2IMG: _ClassVar[GenerationMode]
    GENERATION_MODE_INPAINT: _ClassVar[GenerationMode]
    GENERATION_MODE_UPSCALE: _ClassVar[GenerationMode]
    GENERATION_MODE_VARIATION: _ClassVar[GenerationMode]

class ResizeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIZE_MODE_UNSPECIFIED: _ClassVar[ResizeMode]
    RESIZE_MODE_JUST_RESIZE: _ClassVar[ResizeMode]
    RESIZE_MODE_CROP_AND_RESIZE: _ClassVar[ResizeMode]
    RESIZE_MODE_RESIZE_AND_FILL: _ClassVar[ResizeMode]
    RESIZE_MODE_LATENT_UPSCALE: _ClassVar[ResizeMode]

class InpaintFill(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPAINT_FILL_UNSPECIFIED: _ClassVar[InpaintFill]
    INPAINT_FILL_FILL: _ClassVar[InpaintFill]
    INPAINT_FILL_ORIGINAL: _ClassVar[InpaintFill]
    INPAINT_FILL_LATENT_NOISE: _ClassVar[InpaintFill]
    INPAINT_FILL_LATENT_NOTHING: _ClassVar[InpaintFill]

class VariationStrength(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VARIATION_STRENGTH_UNSPECIFIED: _ClassVar[VariationStrength]
    VARIATION_STRENGTH_SUBTLE: _ClassVar[VariationStrength]
    VARIATION_STRENGTH_STRONG: _ClassVar[VariationStrength]
GENERATION_MODE_UNSPECIFIED: GenerationMode
GENERATION_MODE_TXT2IMG: GenerationMode
GENERATION_MODE_IMG2IMG: GenerationMode
GENERATION_MODE_INPAINT: GenerationMode
GENERATION_MODE_UPSCALE: GenerationMode
GENERATION_MODE_VARIATION: GenerationMode
RESIZE_MODE_UNSPECIFIED: ResizeMode
RESIZE_MODE_JUST_RESIZE: ResizeMode
RESIZE_MODE_CROP_AND_RESIZE: ResizeMode
RESIZE_MODE_RESIZE_AND_FILL: ResizeMode
RESIZE_MODE_LATENT_UPSCALE: ResizeMode
INPAINT_FILL_UNSPECIFIED: InpaintFill
INPAINT_FILL_FILL: InpaintFill
INPAINT_FILL_ORIGINAL: InpaintFill
INPAINT_FILL_LATENT_NOISE: InpaintFill
INPAINT_FILL_LATENT_NOTHING: InpaintFill
VARIATION_STRENGTH_UNSPECIFIED: VariationStrength
VARIATION_STRENGTH_SUBTLE: VariationStrength
VARIATION_STRENGTH_STRONG: VariationStrength

class Img2ImgOptions(_message.Message):
    __slots__ = ("init_image", "denoising_strength", "resize_mode", "initial_noise_multiplier")
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_MODE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    init_image: _common_pb2.ImageRef
    denoising_strength: float
    resize_mode: ResizeMode
    initial_noise_multiplier: float
    def __init__(self, init_image: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., denoising_strength: _Optional[float] = ..., resize_mode: _Optional[_Union[ResizeMode, str]] = ..., initial_noise_multiplier: _Optional[float] = ...) -> None: ...

class InpaintOptions(_message.Message):
    __slots__ = ("mask", "mask_blur", "fill", "only_masked", "only_masked_padding", "invert_mask", "mask_blur_x", "mask_blur_y")
    MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    ONLY_MASKED_FIELD_NUMBER: _ClassVar[int]
    ONLY_MASKED_PADDING_FIELD_NUMBER: _ClassVar[int]
    INVERT_MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_X_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_Y_FIELD_NUMBER: _ClassVar[int]
    mask: _common_pb2.ImageRef
    mask_blur: int
    fill: InpaintFill
    only_masked: bool
    only_masked_padding: int
    invert_mask: bool
    mask_blur_x: int
    mask_blur_y: int
    def __init__(self, mask: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., mask_blur: _Optional[int] = ..., fill: _Optional[_Union[InpaintFill, str]] = ..., only_masked: _Optional[bool] = ..., only_masked_padding: _Optional[int] = ..., invert_mask: _Optional[bool] = ..., mask_blur_x: _Optional[int] = ..., mask_blur_y: _Optional[int] = ...) -> None: ...

class HiresOptions(_message.Message):
    __slots__ = ("enabled", "scale", "upscaler", "second_pass_steps", "denoising_strength", "resize_x", "resize_y", "sampler", "prompt", "negative_prompt")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    UPSCALER_FIELD_NUMBER: _ClassVar[int]
    SECOND_PASS_STEPS_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_X_FIELD_NUMBER: _ClassVar[int]
    RESIZE_Y_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    scale: float
    upscaler: str
    second_pass_steps: int
    denoising_strength: float
    resize_x: int
    resize_y: int
    sampler: str
    prompt: str
    negative_prompt: str
    def __init__(self, enabled: _Optional[bool] = ..., scale: _Optional[float] = ..., upscaler: _Optional[str] = ..., second_pass_steps: _Optional[int] = ..., denoising_strength: _Optional[float] = ..., resize_x: _Optional[int] = ..., resize_y: _Optional[int] = ..., sampler: _Optional[str] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ...) -> None: ...

class UpscaleOptions(_message.Message):
    __slots__ = ("image", "upscaler", "scale", "tiled_refine", "tile_size", "tile_overlap", "denoising_strength")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    UPSCALER_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TILED_REFINE_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageRef
    upscaler: str
    scale: float
    tiled_refine: bool
    tile_size: int
    tile_overlap: int
    denoising_strength: float
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., upscaler: _Optional[str] = ..., scale: _Optional[float] = ..., tiled_refine: _Optional[bool] = ..., tile_size: _Optional[int] = ..., tile_overlap: _Optional[int] = ..., denoising_strength: _Optional[float] = ...) -> None: ...

class VariationOptions(_message.Message):
    __slots__ = ("source", "strength")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    source: _common_pb2.ImageRef
    strength: VariationStrength
    def __init__(self, source: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., strength: _Optional[_Union[VariationStrength, str]] = ...) -> None: ...

class PreviewOptions(_message.Message):
    __slots__ = ("enabled", "every_n_steps", "max_size", "method")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    every_n_steps: int
    max_size: int
    method: str
    def __init__(self, enabled: _Optional[bool] = ..., every_n_steps: _Optional[int] = ..., max_size: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "mode", "params", "img2img", "inpaint", "hires", "upscale", "variation", "preview", "priority", "owner", "timeout")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    IMG2IMG_FIELD_NUMBER: _ClassVar[int]
    INPAINT_FIELD_NUMBER: _ClassVar[int]
    HIRES_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    VARIATION_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    mode: GenerationMode
    params: _common_pb2.GenerationParams
    img2img: Img2ImgOptions
    inpaint: InpaintOptions
    hires: HiresOptions
    upscale: UpscaleOptions
    variation: VariationOptions
    preview: PreviewOptions
    priority: int
    owner: str
    timeout: _duration_pb2.Duration
    def __init__(self, request_id: _Optional[str] = ..., mode: _Optional[_Union[GenerationMode, str]] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., img2img: _Optional[_Union[Img2ImgOptions, _Mapping]] = ..., inpaint: _Optional[_Union[InpaintOptions, _Mapping]] = ..., hires: _Optional[_Union[HiresOptions, _Mapping]] = ..., upscale: _Optional[_Union[UpscaleOptions, _Mapping]] = ..., variation: _Optional[_Union[VariationOptions, _Mapping]] = ..., preview: _Optional[_Union[PreviewOptions, _Mapping]] = ..., priority: _Optional[int] = ..., owner: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class QueuedEvent(_message.Message):
    __slots__ = ("position", "queue_depth")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    position: int
    queue_depth: int
    def __init__(self, position: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class GenerationResult(_message.Message):
    __slots__ = ("images", "elapsed")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.GeneratedImage]
    elapsed: _duration_pb2.Duration
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.GeneratedImage, _Mapping]]] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("request_id", "queued", "progress", "result")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    queued: QueuedEvent
    progress: _common_pb2.ProgressEvent
    result: GenerationResult
    def __init__(self, request_id: _Optional[str] = ..., queued: _Optional[_Union[QueuedEvent, _Mapping]] = ..., progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., result: _Optional[_Union[GenerationResult, _Mapping]] = ...) -> None: ...

class WatchGenerationRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ModelKind
    def __init__(self, kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_checkpoint")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelInfo]
    default_checkpoint: str
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelInfo, _Mapping]]] = ..., default_checkpoint: _Optional[str] = ...) -> None: ...

class ImportModelHeader(_message.Message):
    __slots__ = ("name", "kind", "format", "sha256", "overwrite")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: _common_pb2.ModelKind
    format: str
    sha256: str
    overwrite: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., format: _Optional[str] = ..., sha256: _Optional[str] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportModelHeader
    chunk: _common_pb2.FileChunk
    def __init__(self, header: _Optional[_Union[ImportModelHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.FileChunk, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: _common_pb2.ModelKind
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ListSamplersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSamplersResponse(_message.Message):
    __slots__ = ("samplers",)
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    samplers: _containers.RepeatedCompositeFieldContainer[_common_pb2.SamplerInfo]
    def __init__(self, samplers: _Optional[_Iterable[_Union[_common_pb2.SamplerInfo, _Mapping]]] = ...) -> None: ...

class ListUpscalersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpscalerInfo(_message.Message):
    __slots__ = ("name", "model_name", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_name: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., model_name: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class ListUpscalersResponse(_message.Message):
    __slots__ = ("upscalers",)
    UPSCALERS_FIELD_NUMBER: _ClassVar[int]
    upscalers: _containers.RepeatedCompositeFieldContainer[UpscalerInfo]
    def __init__(self, upscalers: _Optional[_Iterable[_Union[UpscalerInfo, _Mapping]]] = ...) -> None: ...

class Style(_message.Message):
    __slots__ = ("name", "title", "category", "lora", "weight", "trigger_words", "prompt_template", "negative_prompt", "preview", "has_preview", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_WORDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    HAS_PREVIEW_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    title: str
    category: str
    lora: str
    weight: float
    trigger_words: _containers.RepeatedScalarFieldContainer[str]
    prompt_template: str
    negative_prompt: str
    preview: bytes
    has_preview: bool
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., title: _Optional[str] = ..., category: _Optional[str] = ..., lora: _Optional[str] = ..., weight: _Optional[float] = ..., trigger_words: _Optional[_Iterable[str]] = ..., prompt_template: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., preview: _Optional[bytes] = ..., has_preview: _Optional[bool] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListStylesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStylesResponse(_message.Message):
    __slots__ = ("styles",)
    STYLES_FIELD_NUMBER: _ClassVar[int]
    styles: _containers.RepeatedCompositeFieldContainer[Style]
    def __init__(self, styles: _Optional[_Iterable[_Union[Style, _Mapping]]] = ...) -> None: ...

class GetStyleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PutStyleRequest(_message.Message):
    __slots__ = ("style",)
    STYLE_FIELD_NUMBER: _ClassVar[int]
    style: Style
    def __init__(self, style: _Optional[_Union[Style, _Mapping]] = ...) -> None: ...

class DeleteStyleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteStyleResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
