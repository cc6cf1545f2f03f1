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
