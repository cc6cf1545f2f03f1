import dataclasses
import json
from dataclasses import fields

import pytest

from tvmq import QuantConfig
from tvmq.config import DEFAULTS, FIELD_SCHEMES, SCHEMES


@pytest.mark.parametrize("field,value", [("scheme", "int3"), ("requant", "float"),
                                         ("rounding", "up"), ("observer", "entropy"),
                                         ("weight_rounding", "stochastic")])
def test_unknown_names_are_rejected_with_the_allowed_ones(field, value):
    with pytest.raises(ValueError, match=rf"QuantConfig.{field}='{value}'.*use one of"):
        QuantConfig(**{field: value})


@pytest.mark.parametrize("bits", [1, 9, 4.0, True])
def test_weight_bits_must_be_an_int_from_2_to_8(bits):
    with pytest.raises(ValueError, match=rf"QuantConfig.weight_bits={bits!r}: use an integer"):
        QuantConfig(weight_bits=bits)


def test_weight_width_and_rounding_show_in_the_label():
    assert QuantConfig(weight_bits=4).label == "int8 w4 mult_shift/double minmax"
    assert QuantConfig(scheme="mixed", weight_rounding="adaround").label == \
        "mixed w,a 4/8 75% cycles mult_shift/double minmax adaround"


@pytest.mark.parametrize("field", ["equalize", "bias_absorption", "bias_correction"])
def test_booster_switches_are_bools_and_show_in_the_label(field):
    with pytest.raises(ValueError, match=f"QuantConfig.{field}=1; use True or False"):
        QuantConfig(**{field: 1})
    assert QuantConfig(equalize=True, bias_absorption=True).label == \
        "int8 mult_shift/double minmax cle ba"
    assert QuantConfig(bias_correction=False).label == "int8 mult_shift/double minmax no-bc"
    assert QuantConfig(scheme="lbfp8").corrects_biases is False  # on by default, int8/mixed only
    assert "bc" not in QuantConfig(scheme="lbfp8").label


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
    (dict(scheme="lbfp8", lbfp_activation_block_size=0),
     r"QuantConfig.lbfp_activation_block_size=0"),
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


# A valid value other than the default for every field (for the scheme it applies to).
NON_DEFAULT = dict(scheme="mixed", requant="fp32", rounding="single", observer="kl",
                   per_channel_weights=False, symmetric_activations=True, sqnr_samples=0,
                   lbfp_frac_bits=1, lbfp_block_size=8, lbfp_activation_block_size=4,
                   bits=(8,), latency_budget=0.5,
                   weight_budget=0.5, bops_budget=0.5, layer_bits={"conv2d_0": (8, 8)},
                   sensitivity_samples=4, weight_rounding="adaround", weight_bits=4,
                   keep_float=("conv2d_0",), equalize=True, bias_absorption=True,
                   bias_correction=False)
NOT_APPLYING = [(f, s) for f, schemes in FIELD_SCHEMES.items() for s in SCHEMES
                if s not in schemes]
APPLYING = [(f, s) for f, schemes in FIELD_SCHEMES.items() for s in schemes if f != "scheme"]


def test_the_table_names_every_field_and_only_known_schemes():
    assert list(FIELD_SCHEMES) == [f.name for f in fields(QuantConfig)] == list(NON_DEFAULT)
    assert all(set(s) <= set(SCHEMES) and s for s in FIELD_SCHEMES.values())
    assert NOT_APPLYING and all(DEFAULTS[f] != NON_DEFAULT[f] for f in FIELD_SCHEMES)


@pytest.mark.parametrize("field,scheme", NOT_APPLYING)
def test_a_field_set_under_a_scheme_it_does_not_apply_to_is_rejected(field, scheme):
    value = NON_DEFAULT[field]
    applies_to = FIELD_SCHEMES[field]
    which = (f"scheme '{applies_to[0]}'" if len(applies_to) == 1
             else "schemes " + ", ".join(f"'{s}'" for s in applies_to))
    with pytest.raises(ValueError) as err:
        QuantConfig(scheme=scheme, **{field: value})
    assert str(err.value).startswith(f"QuantConfig.{field}={value!r} applies to {which} only "
                                     f"(scheme is '{scheme}'); drop it or use ")


@pytest.mark.parametrize("field,scheme", APPLYING)
def test_a_field_set_under_a_scheme_it_applies_to_is_kept(field, scheme):
    cfg = QuantConfig(scheme=scheme, **{field: NON_DEFAULT[field]})
    assert getattr(cfg, field) == NON_DEFAULT[field]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_defaults_never_trip_the_check_even_when_given(scheme):
    given = {f: v for f, v in DEFAULTS.items() if f not in ("scheme", "bits")}
    cfg = QuantConfig(scheme=scheme, bits=[4, 8], **given)
    assert cfg == QuantConfig(scheme=scheme) and cfg.bits == (4, 8)


def test_one_message_names_the_field_the_value_the_scheme_and_the_fix():
    with pytest.raises(ValueError) as err:
        QuantConfig(scheme="int8", latency_budget=0.5)
    assert str(err.value) == ("QuantConfig.latency_budget=0.5 applies to scheme 'mixed' only "
                              "(scheme is 'int8'); drop it or use scheme='mixed'.")
    with pytest.raises(ValueError) as err:
        QuantConfig(scheme="lbfp8", requant="fp32")
    assert str(err.value) == ("QuantConfig.requant='fp32' applies to schemes 'int8', 'mixed' "
                              "only (scheme is 'lbfp8'); drop it or use one of those schemes.")


@pytest.mark.parametrize("scheme", ["int8", "mixed"])
def test_rounding_applies_to_mult_shift_only(scheme):
    with pytest.raises(ValueError) as err:
        QuantConfig(scheme=scheme, requant="fp32", rounding="tonearest")
    assert str(err.value) == ("QuantConfig.rounding='tonearest' applies to requant='mult_shift' "
                              "only (requant is 'fp32'); drop it or use requant='mult_shift'.")
    assert QuantConfig(scheme=scheme, requant="fp32", rounding="double").requant == "fp32"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_equal_configs_hash_equal(scheme):
    kwargs = {f: NON_DEFAULT[f] for f, schemes in FIELD_SCHEMES.items()
              if scheme in schemes and f not in ("scheme", "rounding")}  # rounding: fp32 here
    a, b = QuantConfig(scheme=scheme, **kwargs), QuantConfig(scheme=scheme, **kwargs)
    assert a == b and hash(a) == hash(b) and len({a, b, QuantConfig(scheme=scheme)}) == 2


def test_every_field_that_applies_takes_part_in_hash_and_equality():
    base = QuantConfig(scheme="mixed")
    for field in ("requant", "per_channel_weights", "bits", "latency_budget", "layer_bits"):
        other = dataclasses.replace(base, **{field: NON_DEFAULT[field]})
        assert other != base and hash(other) != hash(base), field


def test_layer_bits_dict_in_immutable_and_hashable_stored():
    given = {"conv2d_1": [4, 8], "conv2d_0": (8, 4)}
    cfg = QuantConfig(scheme="mixed", layer_bits=given)
    given["conv2d_0"] = (4, 4)  # the caller's dict is not shared
    assert cfg.layer_bits == {"conv2d_0": (8, 4), "conv2d_1": (4, 8)}
    assert list(cfg.layer_bits) == ["conv2d_0", "conv2d_1"]
    assert cfg.layer_bits.get("conv2d_1") == (4, 8) and cfg.layer_bits.get("x", (8, 8)) == (8, 8)
    with pytest.raises(TypeError):
        cfg.layer_bits["conv2d_0"] = (8, 8)
    same = QuantConfig(scheme="mixed", layer_bits={"conv2d_0": (8, 4), "conv2d_1": (4, 8)})
    assert same == cfg and hash(same) == hash(cfg)


def test_to_dict_is_json_and_round_trips():
    cfg = QuantConfig(scheme="mixed", layer_bits={"conv2d_0": (4, 8)}, bits=[8, 4],
                      weight_budget=0.5, observer="percentile")
    d = cfg.to_dict()
    assert d["layer_bits"] == {"conv2d_0": [4, 8]}
    assert json.loads(json.dumps(d)) == {**d, "bits": [4, 8]}
    assert QuantConfig(**d) == cfg and QuantConfig(**json.loads(json.dumps(d))) == cfg
    for cfg in (QuantConfig(), QuantConfig(scheme="lbfp6", lbfp_block_size=8)):
        assert QuantConfig(**cfg.to_dict()) == cfg


def test_replace_keeps_working_and_rechecks():
    cfg = QuantConfig(scheme="mixed", layer_bits={"conv2d_0": (4, 8)})
    assert dataclasses.replace(cfg, sqnr_samples=0).layer_bits == cfg.layer_bits
    with pytest.raises(ValueError, match=r"layer_bits=LayerBits.* applies to scheme 'mixed'"):
        dataclasses.replace(cfg, scheme="int8")
