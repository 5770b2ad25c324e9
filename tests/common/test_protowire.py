from common import protowire
from tandem.v1 import trainer_pb2


def test_varints():
    assert protowire.varint(0) == b"\x00"
    assert protowire.varint(127) == b"\x7f"
    assert protowire.varint(300) == b"\xac\x02"


def test_composed_fields_parse_as_the_message():
    data = protowire.tag(1, protowire.VARINT) + protowire.varint(12345)
    data += protowire.length_delimited(2, b"3DBall?team=0")
    msg = trainer_pb2.ExperienceChunk.FromString(data)
    assert msg.sequence == 12345 and msg.behavior == "3DBall?team=0"
