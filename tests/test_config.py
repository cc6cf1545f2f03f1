import pytest

from tvmq import QuantConfig


@pytest.mark.parametrize("field,value", [("scheme", "int3"), ("requant", "float"),
                                         ("rounding", "up"), ("observer", "entropy")])
def test_unknown_names_are_rejected_with_the_allowed_ones(field, value):
    with pytest.raises(ValueError, match=rf"QuantConfig.{field}='{value}'.*use one of"):
        QuantConfig(**{field: value})


def test_sqnr_samples_must_be_non_negative_int():
    with pytest.raises(ValueError, match="sqnr_samples"):
        QuantConfig(sqnr_samples=-1)


def test_label_and_frozen():
    cfg = QuantConfig(requant="fp32", observer="kl")
    assert cfg.label == "int8 fp32 kl"
    assert QuantConfig(rounding="single").label == "int8 mult_shift/single minmax"
    with pytest.raises(AttributeError):
        cfg.requant = "mult_shift"


def test_lbfp_schemes_default_format_and_observer():
    cfg = QuantConfig(scheme="lbfp8")
    assert cfg.observer == "minmax" and cfg.lbfp_exponents == "max"
    assert QuantConfig(scheme="lbfp8", observer="kl").lbfp_exponents == "kl"
    assert cfg.is_lbfp and not QuantConfig().is_lbfp
    fmt = cfg.lbfp_format
    assert (fmt.bits, fmt.frac_bits, fmt.block_size) == (8, 4, 16)
    assert QuantConfig(scheme="lbfp6").lbfp_format.frac_bits == 2
    assert QuantConfig(scheme="lbfp4", observer="minmax").label == "lbfp4 f1 b16 minmax"
    assert QuantConfig(scheme="lbfp8", lbfp_frac_bits=0, lbfp_block_size=4).label == \
        "lbfp8 f0 b4 minmax"


@pytest.mark.parametrize("kwargs,message", [
    (dict(scheme="lbfp4", lbfp_frac_bits=3), r"QuantConfig.lbfp_frac_bits=3: use an integer in "
                                             r"\[0, 2\]"),
    (dict(scheme="lbfp8", lbfp_block_size=0), r"QuantConfig.lbfp_block_size=0"),
    (dict(scheme="lbfp8", observer="mse"), r"observer='mse' is not supported for scheme "
                                           r"'lbfp8'; use one of \('kl', 'minmax'\)"),
])
def test_bad_lbfp_settings_name_the_field_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=(2, 8)), r"bits=\(2, 8\): use distinct widths from \(4, 8\)"),
    (dict(bits=(8, 8)), "distinct"),
    (dict(latency_budget=0.0), "latency_budget=0.0: use a fraction"),
    (dict(weight_budget=float("nan")), "weight_budget=nan"),
    (dict(sensitivity_samples=0), "sensitivity_samples=0"),
    (dict(layer_bits={"conv2d_0": (4, 16)}), r"layer_bits\['conv2d_0'\]=\(4, 16\)"),
    (dict(layer_bits=[("conv2d_0", (4, 4))]), "use a dict"),
])
def test_bad_mixed_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(scheme="mixed", **kwargs)


def test_mixed_defaults_and_label():
    c = QuantConfig(scheme="mixed", bits=[8, 4])
    assert c.is_mixed and c.bits == (4, 8) and c.latency_budget == 0.75
    assert c.label == "mixed w,a 4/8 75% cycles mult_shift/double minmax"
    assert QuantConfig(scheme="mixed", layer_bits={"a": [4, 8]}).layer_bits == {"a": (4, 8)}


def test_mixed_bits_must_include_8():
    with pytest.raises(ValueError, match=r"bits=\(4,\): include 8"):
        QuantConfig(scheme="mixed", bits=(4,))
