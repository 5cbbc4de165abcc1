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

class CropMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CROP_MODE_UNSPECIFIED: _ClassVar[CropMode]
    CROP_MODE_CENTER: _ClassVar[CropMode]
    CROP_MODE_SUBJECT: _ClassVar[CropMode]
    CROP_MODE_BUCKET: _ClassVar[CropMode]

class TrainingPreset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_PRESET_UNSPECIFIED: _ClassVar[TrainingPreset]
    TRAINING_PRESET_ANIME: _ClassVar[TrainingPreset]
    TRAINING_PRESET_REALISTIC: _ClassVar[TrainingPreset]
    TRAINING_PRESET_SCENE: _ClassVar[TrainingPreset]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW_8BIT: _ClassVar[Optimizer]
    OPTIMIZER_LION: _ClassVar[Optimizer]
    OPTIMIZER_PRODIGY: _ClassVar[Optimizer]

class MixedPrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIXED_PRECISION_UNSPECIFIED: _ClassVar[MixedPrecision]
    MIXED_PRECISION_NO: _ClassVar[MixedPrecision]
    MIXED_PRECISION_FP16: _ClassVar[MixedPrecision]
    MIXED_PRECISION_BF16: _ClassVar[MixedPrecision]

class TrainingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_STATE_UNSPECIFIED: _ClassVar[TrainingState]
    TRAINING_STATE_QUEUED: _ClassVar[TrainingState]
    TRAINING_STATE_PREPARING: _ClassVar[TrainingState]
    TRAINING_STATE_RUNNING: _ClassVar[TrainingState]
    TRAINING_STATE_SUCCEEDED: _ClassVar[TrainingState]
    TRAINING_STATE_FAILED: _ClassVar[TrainingState]
    TRAINING_STATE_CANCELLED: _ClassVar[TrainingState]
CROP_MODE_UNSPECIFIED: CropMode
CROP_MODE_CENTER: CropMode
CROP_MODE_SUBJECT: CropMode
CROP_MODE_BUCKET: CropMode
TRAINING_PRESET_UNSPECIFIED: TrainingPreset
TRAINING_PRESET_ANIME: TrainingPreset
TRAINING_PRESET_REALISTIC: TrainingPreset
TRAINING_PRESET_SCENE: TrainingPreset
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_ADAMW: Optimizer
OPTIMIZER_ADAMW_8BIT: Optimizer
OPTIMIZER_LION: Optimizer
OPTIMIZER_PRODIGY: Optimizer
MIXED_PRECISION_UNSPECIFIED: MixedPrecision
MIXED_PRECISION_NO: MixedPrecision
MIXED_PRECISION_FP16: MixedPrecision
MIXED_PRECISION_BF16: MixedPrecision
TRAINING_STATE_UNSPECIFIED: TrainingState
TRAINING_STATE_QUEUED: TrainingState
TRAINING_STATE_PREPARING: TrainingState
TRAINING_STATE_RUNNING: TrainingState
TRAINING_STATE_SUCCEEDED: TrainingState
TRAINING_STATE_FAILED: TrainingState
TRAINING_STATE_CANCELLED: TrainingState

class DatasetImage(_message.Message):
    __slots__ = ("path", "caption", "width", "height", "repeats", "thumbnail")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    path: str
    caption: str
    width: int
    height: int
    repeats: int
    thumbnail: bytes
    def __init__(self, path: _Optional[str] = ..., caption: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., repeats: _Optional[int] = ..., thumbnail: _Optional[bytes] = ...) -> None: ...

class TagCount(_message.Message):
    __slots__ = ("tag", "count")
    TAG_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    tag: str
    count: int
    def __init__(self, tag: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "owner", "name", "created_at", "images", "tag_frequency", "prepared_resolution")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TAG_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    PREPARED_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    name: str
    created_at: _timestamp_pb2.Timestamp
    images: _containers.RepeatedCompositeFieldContainer[DatasetImage]
    tag_frequency: _containers.RepeatedCompositeFieldContainer[TagCount]
    prepared_resolution: int
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., images: _Optional[_Iterable[_Union[DatasetImage, _Mapping]]] = ..., tag_frequency: _Optional[_Iterable[_Union[TagCount, _Mapping]]] = ..., prepared_resolution: _Optional[int] = ...) -> None: ...

class CreateDatasetHeader(_message.Message):
    __slots__ = ("owner", "name", "default_repeats")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REPEATS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    name: str
    default_repeats: int
    def __init__(self, owner: _Optional[str] = ..., name: _Optional[str] = ..., default_repeats: _Optional[int] = ...) -> None: ...

class DatasetFile(_message.Message):
    __slots__ = ("path", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("header", "file")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    header: CreateDatasetHeader
    file: DatasetFile
    def __init__(self, header: _Optional[_Union[CreateDatasetHeader, _Mapping]] = ..., file: _Optional[_Union[DatasetFile, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("owner", "dataset_id", "with_thumbnails")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    WITH_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset_id: str
    with_thumbnails: bool
    def __init__(self, owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., with_thumbnails: _Optional[bool] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("owner",)
    OWNER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    def __init__(self, owner: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("owner", "dataset_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset_id: str
    def __init__(self, owner: _Optional[str] = ..., dataset_id: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateCaptionRequest(_message.Message):
    __slots__ = ("owner", "dataset_id", "path", "caption")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset_id: str
    path: str
    caption: str
    def __init__(self, owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., path: _Optional[str] = ..., caption: _Optional[str] = ...) -> None: ...

class EditTagsRequest(_message.Message):
    __slots__ = ("owner", "dataset_id", "paths", "add", "remove", "replace", "trigger_word")
    class ReplaceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_WORD_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    add: _containers.RepeatedScalarFieldContainer[str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    replace: _containers.ScalarMap[str, str]
    trigger_word: str
    def __init__(self, owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., add: _Optional[_Iterable[str]] = ..., remove: _Optional[_Iterable[str]] = ..., replace: _Optional[_Mapping[str, str]] = ..., trigger_word: _Optional[str] = ...) -> None: ...

class PrepareDatasetRequest(_message.Message):
    __slots__ = ("owner", "dataset_id", "resolution", "crop", "bucket_min", "bucket_max", "bucket_step")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MIN_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MAX_FIELD_NUMBER: _ClassVar[int]
    BUCKET_STEP_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset_id: str
    resolution: int
    crop: CropMode
    bucket_min: int
    bucket_max: int
    bucket_step: int
    def __init__(self, owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., resolution: _Optional[int] = ..., crop: _Optional[_Union[CropMode, str]] = ..., bucket_min: _Optional[int] = ..., bucket_max: _Optional[int] = ..., bucket_step: _Optional[int] = ...) -> None: ...

class AutoTagRequest(_message.Message):
    __slots__ = ("owner", "dataset_id", "tagger", "threshold", "character_threshold", "overwrite")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TAGGER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    dataset_id: str
    tagger: str
    threshold: float
    character_threshold: float
    overwrite: bool
    def __init__(self, owner: _Optional[str] = ..., dataset_id: _Optional[str] = ..., tagger: _Optional[str] = ..., threshold: _Optional[float] = ..., character_threshold: _Optional[float] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("dataset_id", "base_model", "output_name", "preset", "network_dim", "network_alpha", "learning_rate", "unet_lr", "text_encoder_lr", "train_text_encoder", "optimizer", "lr_scheduler", "lr_warmup_steps", "repeats", "epochs", "batch_size", "resolution", "bucketing", "mixed_precision", "gradient_checkpointing", "cache_latents", "cache_text_embeddings", "noise_offset", "min_snr_gamma", "clip_skip", "seed", "sample_every_n_steps", "sample_prompts", "save_every_n_epochs", "max_train_steps", "save_state_every_n_steps")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DIM_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    UNET_LR_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_LR_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TEXT_ENCODER_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    LR_WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    BUCKETING_FIELD_NUMBER: _ClassVar[int]
    MIXED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    CACHE_LATENTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TEXT_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    NOISE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MIN_SNR_GAMMA_FIELD_NUMBER: _ClassVar[int]
    CLIP_SKIP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAVE_EVERY_N_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_STATE_EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    base_model: str
    output_name: str
    preset: TrainingPreset
    network_dim: int
    network_alpha: float
    learning_rate: float
    unet_lr: float
    text_encoder_lr: float
    train_text_encoder: bool
    optimizer: Optimizer
    lr_scheduler: str
    lr_warmup_steps: int
    repeats: int
    epochs: int
    batch_size: int
    resolution: int
    bucketing: bool
    mixed_precision: MixedPrecision
    gradient_checkpointing: bool
    cache_latents: bool
    cache_text_embeddings: bool
    noise_offset: float
    min_snr_gamma: float
    clip_skip: int
    seed: int
    sample_every_n_steps: int
    sample_prompts: _containers.RepeatedScalarFieldContainer[str]
    save_every_n_epochs: int
    max_train_steps: int
    save_state_every_n_steps: int
    def __init__(self, dataset_id: _Optional[str] = ..., base_model: _Optional[str] = ..., output_name: _Optional[str] = ..., preset: _Optional[_Union[TrainingPreset, str]] = ..., network_dim: _Optional[int] = ..., network_alpha: _Optional[float] = ..., learning_rate: _Optional[float] = ..., unet_lr: _Optional[float] = ..., text_encoder_lr: _Optional[float] = ..., train_text_encoder: _Optional[bool] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., lr_scheduler: _Optional[str] = ..., lr_warmup_steps: _Optional[int] = ..., repeats: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., resolution: _Optional[int] = ..., bucketing: _Optional[bool] = ..., mixed_precision: _Optional[_Union[MixedPrecision, str]] = ..., gradient_checkpointing: _Optional[bool] = ..., cache_latents: _Optional[bool] = ..., cache_text_embeddings: _Optional[bool] = ..., noise_offset: _Optional[float] = ..., min_snr_gamma: _Optional[float] = ..., clip_skip: _Optional[int] = ..., seed: _Optional[int] = ..., sample_every_n_steps: _Optional[int] = ..., sample_prompts: _Optional[_Iterable[str]] = ..., save_every_n_epochs: _Optional[int] = ..., max_train_steps: _Optional[int] = ..., save_state_every_n_steps: _Optional[int] = ...) -> None: ...

class TrainingEstimate(_message.Message):
    __slots__ = ("total_steps", "images", "repeats", "epochs", "batch_size", "estimated_file_bytes", "warnings", "resolved")
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    total_steps: int
    images: int
    repeats: int
    epochs: int
    batch_size: int
    estimated_file_bytes: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    resolved: TrainingConfig
    def __init__(self, total_steps: _Optional[int] = ..., images: _Optional[int] = ..., repeats: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., estimated_file_bytes: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., resolved: _Optional[_Union[TrainingConfig, _Mapping]] = ...) -> None: ...

class EstimateTrainingRequest(_message.Message):
    __slots__ = ("owner", "config")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    owner: str
    config: TrainingConfig
    def __init__(self, owner: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("request_id", "owner", "config")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    owner: str
    config: TrainingConfig
    def __init__(self, request_id: _Optional[str] = ..., owner: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("id", "owner", "state", "estimate", "step", "epoch", "loss", "learning_rate", "eta", "created_at", "started_at", "finished_at", "lora_name", "error", "sample_keys", "attempts", "resumed_from_step", "lora_file_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    LORA_NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    LORA_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    state: TrainingState
    estimate: TrainingEstimate
    step: int
    epoch: int
    loss: float
    learning_rate: float
    eta: _duration_pb2.Duration
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    lora_name: str
    error: str
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    attempts: int
    resumed_from_step: int
    lora_file_bytes: int
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., state: _Optional[_Union[TrainingState, str]] = ..., estimate: _Optional[_Union[TrainingEstimate, _Mapping]] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lora_name: _Optional[str] = ..., error: _Optional[str] = ..., sample_keys: _Optional[_Iterable[str]] = ..., attempts: _Optional[int] = ..., resumed_from_step: _Optional[int] = ..., lora_file_bytes: _Optional[int] = ...) -> None: ...

class GetTrainingRequest(_message.Message):
    __slots__ = ("owner", "job_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    job_id: str
    def __init__(self, owner: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class ListTrainingsRequest(_message.Message):
    __slots__ = ("owner",)
    OWNER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    def __init__(self, owner: _Optional[str] = ...) -> None: ...

class ListTrainingsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ...) -> None: ...

class WatchTrainingRequest(_message.Message):
    __slots__ = ("owner", "job_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    job_id: str
    def __init__(self, owner: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class CancelTrainingRequest(_message.Message):
    __slots__ = ("owner", "job_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    job_id: str
    def __init__(self, owner: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "loss", "learning_rate", "eta")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    eta: _duration_pb2.Duration
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TrainingSample(_message.Message):
    __slots__ = ("step", "prompt", "png")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    step: int
    prompt: str
    png: bytes
    def __init__(self, step: _Optional[int] = ..., prompt: _Optional[str] = ..., png: _Optional[bytes] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("job_id", "progress", "sample", "job")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    progress: TrainingProgress
    sample: TrainingSample
    job: TrainingJob
    def __init__(self, job_id: _Optional[str] = ..., progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., sample: _Optional[_Union[TrainingSample, _Mapping]] = ..., job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...
