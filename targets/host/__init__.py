"""The host target: TVM's default Relax pipeline (with fusion) for llvm, run by the Relax VM."""

from .build import HostModule, build, load

__all__ = ["HostModule", "build", "load"]
