import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_CHECKPOINT: _ClassVar[ModelKind]
    MODEL_KIND_VAE: _ClassVar[ModelKind]
    MODEL_KIND_LORA: _ClassVar[ModelKind]
    MODEL_KIND_UPSCALER: _ClassVar[ModelKind]
    MODEL_KIND_TAGGER: _ClassVar[ModelKind]
    MODEL_KIND_VAE_APPROX: _ClassVar[ModelKind]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_CHECKPOINT: ModelKind
MODEL_KIND_VAE: ModelKind
MODEL_KIND_LORA: ModelKind
MODEL_KIND_UPSCALER: ModelKind
MODEL_KIND_TAGGER: ModelKind
MODEL_KIND_VAE_APPROX: ModelKind

class ImageRef(_message.Message):
    __slots__ = ("data", "image_id", "object_key")
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    image_id: str
    object_key: str
    def __init__(self, data: _Optional[bytes] = ..., image_id: _Optional[str] = ..., object_key: _Optional[str] = ...) -> None: ...

class LoraRef(_message.Message):
    __slots__ = ("name", "weight", "text_encoder_weight", "short_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHORT_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    text_encoder_weight: float
    short_hash: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., text_encoder_weight: _Optional[float] = ..., short_hash: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "object_key", "sha256", "short_hash", "size_bytes", "architecture", "format", "metadata", "created_at", "title")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SHORT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: ModelKind
    object_key: str
    sha256: str
    short_hash: str
    size_bytes: int
    architecture: str
    format: str
    metadata: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    title: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., object_key: _Optional[str] = ..., sha256: _Optional[str] = ..., short_hash: _Optional[str] = ..., size_bytes: _Optional[int] = ..., architecture: _Optional[str] = ..., format: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., title: _Optional[str] = ...) -> None: ...

class SamplerInfo(_message.Message):
    __slots__ = ("name", "aliases", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "model", "vae", "loras", "sampler", "schedule_type", "steps", "cfg_scale", "width", "height", "seed", "subseed", "subseed_strength", "batch_size", "n_iter", "clip_skip", "eta", "tiling", "deep_cache_interval", "eta_noise_seed_delta")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VAE_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TYPE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_ITER_FIELD_NUMBER: _ClassVar[int]
    CLIP_SKIP_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    DEEP_CACHE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ETA_NOISE_SEED_DELTA_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    model: str
    vae: str
    loras: _containers.RepeatedCompositeFieldContainer[LoraRef]
    sampler: str
    schedule_type: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    subseed: int
    subseed_strength: float
    batch_size: int
    n_iter: int
    clip_skip: int
    eta: float
    tiling: bool
    deep_cache_interval: int
    eta_noise_seed_delta: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., model: _Optional[str] = ..., vae: _Optional[str] = ..., loras: _Optional[_Iterable[_Union[LoraRef, _Mapping]]] = ..., sampler: _Optional[str] = ..., schedule_type: _Optional[str] = ..., steps: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., seed: _Optional[int] = ..., subseed: _Optional[int] = ..., subseed_strength: _Optional[float] = ..., batch_size: _Optional[int] = ..., n_iter: _Optional[int] = ..., clip_skip: _Optional[int] = ..., eta: _Optional[float] = ..., tiling: _Optional[bool] = ..., deep_cache_interval: _Optional[int] = ..., eta_noise_seed_delta: _Optional[int] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("png", "seed", "subseed", "subseed_strength", "width", "height", "infotext", "index", "params", "model_sha256", "vae_sha256")
    PNG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INFOTEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    VAE_SHA256_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    seed: int
    subseed: int
    subseed_strength: float
    width: int
    height: int
    infotext: str
    index: int
    params: GenerationParams
    model_sha256: str
    vae_sha256: str
    def __init__(self, png: _Optional[bytes] = ..., seed: _Optional[int] = ..., subseed: _Optional[int] = ..., subseed_strength: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., infotext: _Optional[str] = ..., index: _Optional[int] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., model_sha256: _Optional[str] = ..., vae_sha256: _Optional[str] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("step", "total_steps", "job_no", "job_count", "progress", "eta", "preview_jpeg")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    JOB_NO_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_JPEG_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    job_no: int
    job_count: int
    progress: float
    eta: _duration_pb2.Duration
    preview_jpeg: bytes
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., job_no: _Optional[int] = ..., job_count: _Optional[int] = ..., progress: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., preview_jpeg: _Optional[bytes] = ...) -> None: ...

class FieldViolation(_message.Message):
    __slots__ = ("field", "rule")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    field: str
    rule: str
    def __init__(self, field: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("reason", "message", "violations", "retry_after", "request_id")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    violations: _containers.RepeatedCompositeFieldContainer[FieldViolation]
    retry_after: _duration_pb2.Duration
    request_id: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., violations: _Optional[_Iterable[_Union[FieldViolation, _Mapping]]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "total_size", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_size: int
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...
