"""The gateway's edge logic without servers: keys, rate limits, inputs, styles, model names,
job ids and the order in which replicas are tried."""

from __future__ import annotations

import base64

import pytest

from gateway.a1111.translate import find_model, hires_upscaler, schedule_type
from gateway.auth import RateLimiter, TokenBucket
from gateway.generation import apply_style, decode_base64, job_id
from services.common.clients.replicas import ReplicaSet, balanced_target
from services.common.config import load_settings, parse_api_keys
from services.common.errors import ConfigError, InvalidArgument
from services.common.generation import Settings
from services.common.proto.sdstack.v1 import common_pb2, generator_pb2


def test_api_keys_map_to_users_from_the_setting_and_the_file(tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ops\n\nfile-key-0001:carol\n")
    settings = load_settings(api_keys="abcdefgh:alice, ijklmnop:bob", api_keys_file=keys)
    assert settings.api_key_users() == {
        "abcdefgh": "alice",
        "ijklmnop": "bob",
        "file-key-0001": "carol",
    }
    assert load_settings().api_key_users() == {}  # auth off


@pytest.mark.parametrize("entry", ["short:alice", "abcdefgh:", "abcdefgh:bad/user", "nocolon"])
def test_bad_key_entries_name_the_setting(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_api_keys(entry)
    with pytest.raises(ConfigError) as raised:
        load_settings(api_keys=entry)
    assert raised.value.setting == "SDSTACK_API_KEYS"


def test_a_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token comes every half second
    assert bucket.take(0.5) == 0.0
    assert RateLimiter(0, 1).wait_seconds("anyone") == 0.0  # 0 = no limit


def test_base64_inputs_accept_what_a1111_clients_send() -> None:
    raw = b"\x89PNG..."
    encoded = base64.b64encode(raw).decode()
    assert decode_base64(encoded, "image") == raw
    assert decode_base64(f"data:image/png;base64,{encoded}", "image") == raw
    assert decode_base64(encoded.rstrip("=") + "\n", "image") == raw
    with pytest.raises(InvalidArgument) as raised:
        decode_base64("not base64!", "init_images[0]")
    assert raised.value.violations[0].field == "init_images[0]"


def test_job_ids_are_scoped_by_owner_and_fit_the_generator() -> None:
    assert job_id("alice", "job-1") != job_id("bob", "job-1")
    assert job_id("alice", "job-1") == job_id("alice", "job-1")
    assert len(job_id("alice", "x" * 64)) <= 64
    assert job_id("alice", "x" * 64) != job_id("alice", "x" * 63 + "y")


def test_a_style_wraps_the_prompt_and_adds_its_lora() -> None:
    settings = Settings(prompt="a loft", negative_prompt="noise")
    style = generator_pb2.Style(
        name="interior",
        lora="loft-lora",
        weight=0.6,
        trigger_words=["intr", "loft"],
        prompt_template="interior photo of {prompt}, soft light",
        negative_prompt="clutter",
    )
    styled = apply_style(settings, style)
    assert styled.prompt == "interior photo of a loft, soft light, intr"  # "loft" is there
    assert styled.negative_prompt == "noise, clutter"
    assert [(lora.name, round(lora.weight, 3)) for lora in styled.loras] == [("loft-lora", 0.6)]
    bare = apply_style(
        Settings(prompt="a loft"), generator_pb2.Style(name="plain", prompt_template="film grain")
    )
    assert bare.prompt == "a loft, film grain"


def test_checkpoints_are_found_by_any_a1111_name() -> None:
    sha = "a" * 10 + "b" * 54
    model = common_pb2.ModelInfo(
        name="v1-5",
        format="safetensors",
        sha256=sha,
        short_hash=sha[:10],
        title=f"v1-5.safetensors [{sha[:10]}]",
        object_key="checkpoints/v1-5.safetensors",
    )
    for name in ("v1-5", "v1-5.safetensors", model.title, sha[:10], sha[:8], "v1-5 [old]"):
        assert find_model(name, [model]) is model, name
    assert find_model("v2", [model]) is None


def test_a1111_scheduler_and_upscaler_names() -> None:
    assert schedule_type(None) == "Automatic"
    assert schedule_type("sgm_uniform") == schedule_type("SGM Uniform") == "SGM Uniform"
    with pytest.raises(InvalidArgument):
        schedule_type("beta")
    assert hires_upscaler("Latent (bicubic antialiased)") == "Latent (bicubic antialiased)"
    assert hires_upscaler(None) == hires_upscaler("None") == "Latent"
    assert hires_upscaler("4x-UltraSharp") == "4x-UltraSharp"


class _Fake:
    def __init__(self, target: str) -> None:
        self.target = target

    def close(self) -> None:
        pass


def test_replicas_take_turns_and_a_failed_one_goes_last() -> None:
    replicas = ReplicaSet(["127.0.0.1:1", "127.0.0.1:2"], _Fake, retry_after=60)  # type: ignore[arg-type]
    firsts = [replicas.ordered()[0].target for _ in range(4)]
    assert firsts == ["127.0.0.1:1", "127.0.0.1:2"] * 2
    down = replicas.get("127.0.0.1:1")
    assert down is not None
    replicas.mark_down(down)
    assert [replicas.ordered()[0].target for _ in range(3)] == ["127.0.0.1:2"] * 3
    assert len(replicas.ordered()) == 2  # still tried last, in case all are down
    replicas.mark_up(down)
    assert {replicas.ordered()[0].target for _ in range(2)} == {"127.0.0.1:1", "127.0.0.1:2"}


def test_several_addresses_make_one_balanced_target() -> None:
    assert balanced_target(["gallery:50053"]) == "gallery:50053"
    assert balanced_target(["127.0.0.1:1", "127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"
