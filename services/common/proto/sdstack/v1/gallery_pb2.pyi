import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import common_pb2 as _common_pb2
from . import generator_pb2 as _generator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FileVariant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_VARIANT_UNSPECIFIED: _ClassVar[FileVariant]
    FILE_VARIANT_ORIGINAL: _ClassVar[FileVariant]
    FILE_VARIANT_THUMBNAIL: _ClassVar[FileVariant]
FILE_VARIANT_UNSPECIFIED: FileVariant
FILE_VARIANT_ORIGINAL: FileVariant
FILE_VARIANT_THUMBNAIL: FileVariant

class Image(_message.Message):
    __slots__ = ("id", "owner", "created_at", "request_id", "width", "height", "prompt", "negative_prompt", "seed", "sampler", "steps", "cfg_scale", "model", "model_hash", "vae", "loras", "parent_image_id", "tags", "favourite", "board_ids", "infotext", "sha256", "size_bytes", "generation")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    VAE_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    PARENT_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    FAVOURITE_FIELD_NUMBER: _ClassVar[int]
    BOARD_IDS_FIELD_NUMBER: _ClassVar[int]
    INFOTEXT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    created_at: _timestamp_pb2.Timestamp
    request_id: str
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    model: str
    model_hash: str
    vae: str
    loras: _containers.RepeatedCompositeFieldContainer[_common_pb2.LoraRef]
    parent_image_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    favourite: bool
    board_ids: _containers.RepeatedScalarFieldContainer[str]
    infotext: str
    sha256: str
    size_bytes: int
    generation: _generator_pb2.GenerateRequest
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., seed: _Optional[int] = ..., sampler: _Optional[str] = ..., steps: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., model: _Optional[str] = ..., model_hash: _Optional[str] = ..., vae: _Optional[str] = ..., loras: _Optional[_Iterable[_Union[_common_pb2.LoraRef, _Mapping]]] = ..., parent_image_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., favourite: _Optional[bool] = ..., board_ids: _Optional[_Iterable[str]] = ..., infotext: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., generation: _Optional[_Union[_generator_pb2.GenerateRequest, _Mapping]] = ...) -> None: ...

class CreateImageRequest(_message.Message):
    __slots__ = ("owner", "request_id", "png", "generation", "model_hash", "parent_image_id", "tags")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    request_id: str
    png: bytes
    generation: _generator_pb2.GenerateRequest
    model_hash: str
    parent_image_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, owner: _Optional[str] = ..., request_id: _Optional[str] = ..., png: _Optional[bytes] = ..., generation: _Optional[_Union[_generator_pb2.GenerateRequest, _Mapping]] = ..., model_hash: _Optional[str] = ..., parent_image_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("owner", "image_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    image_id: str
    def __init__(self, owner: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class ImageFilter(_message.Message):
    __slots__ = ("model", "lora", "tag", "board_id", "favourite", "created_after", "created_before", "query")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    BOARD_ID_FIELD_NUMBER: _ClassVar[int]
    FAVOURITE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    model: str
    lora: str
    tag: str
    board_id: str
    favourite: bool
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    query: str
    def __init__(self, model: _Optional[str] = ..., lora: _Optional[str] = ..., tag: _Optional[str] = ..., board_id: _Optional[str] = ..., favourite: _Optional[bool] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., query: _Optional[str] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("owner", "filter", "cursor", "limit")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    owner: str
    filter: ImageFilter
    cursor: str
    limit: int
    def __init__(self, owner: _Optional[str] = ..., filter: _Optional[_Union[ImageFilter, _Mapping]] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_cursor")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    next_cursor: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GetImageFileRequest(_message.Message):
    __slots__ = ("owner", "image_id", "variant")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    owner: str
    image_id: str
    variant: FileVariant
    def __init__(self, owner: _Optional[str] = ..., image_id: _Optional[str] = ..., variant: _Optional[_Union[FileVariant, str]] = ...) -> None: ...

class GetImageUrlRequest(_message.Message):
    __slots__ = ("owner", "image_id", "variant", "expires_in")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    owner: str
    image_id: str
    variant: FileVariant
    expires_in: _duration_pb2.Duration
    def __init__(self, owner: _Optional[str] = ..., image_id: _Optional[str] = ..., variant: _Optional[_Union[FileVariant, str]] = ..., expires_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetImageUrlResponse(_message.Message):
    __slots__ = ("url", "expires_at")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdateImageRequest(_message.Message):
    __slots__ = ("owner", "image_id", "favourite", "tags", "board_ids", "update_mask")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    FAVOURITE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    BOARD_IDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    owner: str
    image_id: str
    favourite: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    board_ids: _containers.RepeatedScalarFieldContainer[str]
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, owner: _Optional[str] = ..., image_id: _Optional[str] = ..., favourite: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ..., board_ids: _Optional[_Iterable[str]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteImageRequest(_message.Message):
    __slots__ = ("owner", "image_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    image_id: str
    def __init__(self, owner: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class DeleteImageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("owner", "image_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    image_id: str
    def __init__(self, owner: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("ancestors", "descendants")
    ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    DESCENDANTS_FIELD_NUMBER: _ClassVar[int]
    ancestors: _containers.RepeatedCompositeFieldContainer[Image]
    descendants: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, ancestors: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., descendants: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class Board(_message.Message):
    __slots__ = ("id", "owner", "name", "created_at", "image_count")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    owner: str
    name: str
    created_at: _timestamp_pb2.Timestamp
    image_count: int
    def __init__(self, id: _Optional[str] = ..., owner: _Optional[str] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image_count: _Optional[int] = ...) -> None: ...

class CreateBoardRequest(_message.Message):
    __slots__ = ("owner", "name")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    owner: str
    name: str
    def __init__(self, owner: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListBoardsRequest(_message.Message):
    __slots__ = ("owner",)
    OWNER_FIELD_NUMBER: _ClassVar[int]
    owner: str
    def __init__(self, owner: _Optional[str] = ...) -> None: ...

class ListBoardsResponse(_message.Message):
    __slots__ = ("boards",)
    BOARDS_FIELD_NUMBER: _ClassVar[int]
    boards: _containers.RepeatedCompositeFieldContainer[Board]
    def __init__(self, boards: _Optional[_Iterable[_Union[Board, _Mapping]]] = ...) -> None: ...

class RenameBoardRequest(_message.Message):
    __slots__ = ("owner", "board_id", "name")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    BOARD_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    owner: str
    board_id: str
    name: str
    def __init__(self, owner: _Optional[str] = ..., board_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteBoardRequest(_message.Message):
    __slots__ = ("owner", "board_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    BOARD_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    board_id: str
    def __init__(self, owner: _Optional[str] = ..., board_id: _Optional[str] = ...) -> None: ...

class DeleteBoardResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ImportImagesRequest(_message.Message):
    __slots__ = ("owner", "filename", "png", "modified_at")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    owner: str
    filename: str
    png: bytes
    modified_at: _timestamp_pb2.Timestamp
    def __init__(self, owner: _Optional[str] = ..., filename: _Optional[str] = ..., png: _Optional[bytes] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImportImagesResponse(_message.Message):
    __slots__ = ("imported", "skipped")
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    imported: _containers.RepeatedCompositeFieldContainer[Image]
    skipped: _containers.RepeatedCompositeFieldContainer[_common_pb2.FieldViolation]
    def __init__(self, imported: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[_common_pb2.FieldViolation, _Mapping]]] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("dry_run", "remove_orphan_records", "min_age")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ORPHAN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    remove_orphan_records: bool
    min_age: _duration_pb2.Duration
    def __init__(self, dry_run: _Optional[bool] = ..., remove_orphan_records: _Optional[bool] = ..., min_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReconcileReport(_message.Message):
    __slots__ = ("orphan_objects", "orphan_records", "restored", "thumbnails_rebuilt", "unrecognised_objects")
    ORPHAN_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_REBUILT_FIELD_NUMBER: _ClassVar[int]
    UNRECOGNISED_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    orphan_objects: _containers.RepeatedScalarFieldContainer[str]
    orphan_records: _containers.RepeatedScalarFieldContainer[str]
    restored: _containers.RepeatedScalarFieldContainer[str]
    thumbnails_rebuilt: _containers.RepeatedScalarFieldContainer[str]
    unrecognised_objects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, orphan_objects: _Optional[_Iterable[str]] = ..., orphan_records: _Optional[_Iterable[str]] = ..., restored: _Optional[_Iterable[str]] = ..., thumbnails_rebuilt: _Optional[_Iterable[str]] = ..., unrecognised_objects: _Optional[_Iterable[str]] = ...) -> None: ...
