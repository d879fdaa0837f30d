from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ProductRecord(_message.Message):
    __slots__ = ("record_id", "product_id", "product_name", "product_price", "category", "sale_start_date", "sale_stop_date", "processed_at", "batch_id", "source", "description")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_PRICE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SALE_START_DATE_FIELD_NUMBER: _ClassVar[int]
    SALE_STOP_DATE_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_AT_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    product_id: str
    product_name: str
    product_price: float
    category: str
    sale_start_date: int
    sale_stop_date: int
    processed_at: int
    batch_id: str
    source: str
    description: str
    def __init__(self, record_id: _Optional[str] = ..., product_id: _Optional[str] = ..., product_name: _Optional[str] = ..., product_price: _Optional[float] = ..., category: _Optional[str] = ..., sale_start_date: _Optional[int] = ..., sale_stop_date: _Optional[int] = ..., processed_at: _Optional[int] = ..., batch_id: _Optional[str] = ..., source: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...
