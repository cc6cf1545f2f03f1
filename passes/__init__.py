"""tvmq's Relax passes (installed as tvmq.passes), in pipeline order; each registers as
`tvmq.<ClassName>` and is one module here.

    FoldBatchNorm, SimplifyClip   import clean-up (tvmq.frontend)
    AnnotateQuantizable           quantizable ops -> `tvmq.<kind>` composites
    InsertTaps                    expose tensors to calibration and the report
    RealizeQuantization           int8 / mixed integer graph (contract: tvmq.ir)
    RealizeLBFP                   LBFP graph (contract: tvmq.ir)
    TileOutputChannels            conv2d/matmul layers split into output-channel tiles
    FakeQuantize, QuantizeGradients   quantization-aware training (tvmq.train)
"""

from .annotate_quantizable import AnnotateQuantizable
from .fake_quantize import FakeQuantize
from .fold_batch_norm import FoldBatchNorm
from .insert_taps import InsertTaps
from .quantize_gradients import QuantizeGradients
from .realize_lbfp import RealizeLBFP
from .realize_quantization import RealizeQuantization
from .simplify_clip import SimplifyClip
from .tile_output_channels import TileOutputChannels

__all__ = ["AnnotateQuantizable", "FakeQuantize", "FoldBatchNorm", "InsertTaps",
           "QuantizeGradients", "RealizeLBFP", "RealizeQuantization", "SimplifyClip",
           "TileOutputChannels"]
