"""The accelerate config files of configs/accelerate/ read through accelerate's own launcher code: each
parses, selects its distributed mode, and (FSDP) names block classes that exist in a molmini model."""
from __future__ import annotations

import os
from unittest import mock

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.dataclasses import get_module_class_from_name
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "accelerate"


def launch_args(name: str, *extra: str):
    """What `accelerate launch --config_file configs/accelerate/NAME.yaml ... train.py` resolves to."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "--main_process_port",
                                               "0", *extra, "train.py"])
    args, _, _ = _validate_launch_command(args)
    return args


@pytest.mark.parametrize("name,mode", [("ddp", DistributedType.MULTI_GPU), ("fsdp", DistributedType.FSDP),
                                       ("deepspeed_zero2", DistributedType.DEEPSPEED)])
def test_config_file_loads_with_its_mode_and_bf16(name, mode):
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # unknown top-level keys raise here
    assert cfg.distributed_type == mode and cfg.mixed_precision == "bf16"
    args = launch_args(name, "--num_processes", "16", "--num_machines", "2")
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (
        mode == DistributedType.MULTI_GPU, mode == DistributedType.FSDP, mode == DistributedType.DEEPSPEED)
    assert args.num_processes == 16 and args.num_machines == 2  # the command line overrides the file


def test_fsdp_config_fully_shards_and_wraps_molmini_transformer_blocks(tiny_model):
    from accelerate import FullyShardedDataParallelPlugin
    env = prepare_multi_gpu_env(launch_args("fsdp"))
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer", "ResidualAttentionBlock"]
    for cls_name in plugin.transformer_cls_names_to_wrap:
        cls = get_module_class_from_name(tiny_model, cls_name)
        assert cls is not None, f"{cls_name} is not a module class of the model"
        assert sum(isinstance(m, cls) for m in tiny_model.modules()) == 2  # the tiny tower's and LM's 2 blocks


def test_deepspeed_config_is_zero_stage_2_without_accumulation():
    args = launch_args("deepspeed_zero2")
    # as accelerate's launch_command does before starting DeepSpeed
    args.deepspeed_fields_from_accelerate_config = list(
        load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "1"
    assert env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
