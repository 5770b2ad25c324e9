"""The fast upb protobuf backend is in use, and mlagents-envs' modules run on it."""

from google.protobuf.internal import api_implementation

from gateway.env import mlagents_protobuf


def test_backend_is_upb():
    assert api_implementation.Type() == "upb"


def test_mlagents_modules_are_modern_and_import():
    assert mlagents_protobuf.is_modern()
    from mlagents_envs.communicator_objects.unity_rl_output_pb2 import UnityRLOutputProto

    msg = UnityRLOutputProto()
    msg.agentInfos["3DBall?team=0"].value.add(reward=1.0, id=7)
    back = UnityRLOutputProto.FromString(msg.SerializeToString())
    assert back.agentInfos["3DBall?team=0"].value[0].id == 7


def test_rebuild_is_idempotent(tmp_path):
    import shutil

    src = mlagents_protobuf.communicator_objects_dir()
    dst = tmp_path / "mlagents_envs" / "communicator_objects"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    before = {p.name: p.read_bytes() for p in dst.glob("*_pb2.py")}
    names = mlagents_protobuf.rebuild(dst)
    assert len(names) == len(before) > 10
    after = {p.name: p.read_bytes() for p in dst.glob("*_pb2.py")}
    assert before == after
