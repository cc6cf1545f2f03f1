"""Every booster on at once: CLE, bias absorption, AdaRound at 4 bits, bias correction
against AdaRound's weights; the compile stays bit-exact with the oracle."""

import tvmq
from tvmq import data


def test_all_boosters_compose_bit_exact(digits):
    x_calib, x_test, y_test = digits
    config = tvmq.QuantConfig(weight_bits=4, weight_rounding="adaround", equalize=True,
                              bias_absorption=True, bias_correction=True, sqnr_samples=4)
    cm = tvmq.compile(data.digits_model_path(), config=config, calib=x_calib[:64],
                      progress=False)
    assert cm.report().config["bias_correction"] and cm.report().config["weight_bits"] == 4
    assert cm.verify(x_test, n=3).ok
    assert (cm.run(x_test).argmax(1) == y_test).mean() > 0.95
