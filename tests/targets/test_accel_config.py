import dataclasses

import pytest
from tvmq.targets.accel import PRESETS, AccelConfig, preset


def test_presets_are_valid_and_named():
    assert set(PRESETS) == {"npu-small", "npu-mid"}
    assert preset("npu-small").macs_per_cycle == 64 and preset("npu-mid").macs_per_cycle == 512
    with pytest.raises(ValueError, match="npu-small"):
        preset("npu-huge")


@pytest.mark.parametrize("field,value,match", [
    ("t_oc", 0, r"t_oc=0: use an integer >= 1"),
    ("t_ic", -2, r"t_ic=-2"),
    ("t_oc", 2.0, r"t_oc=2.0"),
    ("operand_bits", (3,), r"operand_bits"),
    ("weight_buffer_bytes", 100, r"weight_buffer_bytes=100: use an integer >= 256 \(one 16x16"),
    ("act_buffer_bytes", 8, r">= 16"),
    ("acc_buffer_bytes", 63, r">= 64 \(16 int32 accumulators\)"),
    ("dma_bytes_per_cycle", 0, r"dma_bytes_per_cycle"),
    ("requant", "float", r"requant='float'"),
    ("rounding", "up", r"rounding='up'"),
    ("clock_mhz", 0, r"clock_mhz"),
])
def test_bad_settings_name_the_field_and_smallest_value(field, value, match):
    with pytest.raises(ValueError, match=match):
        AccelConfig(**{field: value})


def test_fp32_requant_has_no_rounding():
    assert AccelConfig(requant="fp32", rounding=None).requant == "fp32"
    with pytest.raises(ValueError, match="use rounding=None"):
        AccelConfig(requant="fp32")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("npu-mid").t_oc = 4
