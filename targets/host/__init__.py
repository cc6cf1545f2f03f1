"""The host target: TVM's default Relax pipeline (with fusion) for llvm on this CPU, run by the VM."""

from .build import HostModule, build

__all__ = ["HostModule", "build"]
