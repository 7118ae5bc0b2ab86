from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Lane(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGES: _ClassVar[Lane]
    SNAPSHOT: _ClassVar[Lane]
MESSAGES: Lane
SNAPSHOT: Lane

class StreamHeader(_message.Message):
    __slots__ = ("cluster_id", "sender_id", "receiver_id", "lane")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_ID_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    sender_id: int
    receiver_id: int
    lane: Lane
    def __init__(self, cluster_id: _Optional[int] = ..., sender_id: _Optional[int] = ..., receiver_id: _Optional[int] = ..., lane: _Optional[_Union[Lane, str]] = ...) -> None: ...

class StreamFrame(_message.Message):
    __slots__ = ("header", "messages")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., messages: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StreamAck(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    def __init__(self, member_id: _Optional[int] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("cluster_id", "sender_id", "receiver_id", "method", "payload")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    sender_id: int
    receiver_id: int
    method: str
    payload: bytes
    def __init__(self, cluster_id: _Optional[int] = ..., sender_id: _Optional[int] = ..., receiver_id: _Optional[int] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class CallResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
