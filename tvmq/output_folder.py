"""Export folders: check where an export may go before any work, write it atomically, and never
delete a file tvmq did not write.

An export folder holds `MANIFEST` (tvmq-manifest.json), the list of every file tvmq wrote there
and of the files its generated Makefile builds. The rules, checked by `check_output_folder`:

- a new folder (its missing parents are created) or an existing empty one: written;
- a folder holding an earlier tvmq export and nothing else: replaced only with `overwrite=True`
  (CLI: `--force`);
- anything else is refused with one line naming the folder: a file, a folder holding files tvmq
  did not write, a symbolic link, `/`, the home folder, the current folder or one of its parents,
  and a location that cannot be written.

`write_folder` writes into a temporary sibling folder and renames it into place when complete,
so a failed or interrupted export leaves nothing half-written and the old export intact. A
replaced export is removed file by file from its manifest; anything else found there is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import CompileError

MANIFEST = "tvmq-manifest.json"
FORCE_HINT = "overwrite=True (CLI: --force)"


class OutputFolderError(CompileError):
    """The export location cannot be used; the message names it and says what to do."""


def check_output_folder(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise OutputFolderError unless an export can be written to `out` (see the module rules).
    Writes nothing; returns `out` as an absolute path."""
    path = Path(out).expanduser().absolute()
    if path.is_symlink():
        raise OutputFolderError(f"{out} is a symbolic link; pass the folder it points to.")
    real = path.resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor) or real == Path.home().resolve() or cwd.is_relative_to(real):
        what = ("the root folder" if real == Path(real.anchor) else
                "your home folder" if real == Path.home().resolve() else
                "the current folder" if real == cwd else "a parent of the current folder")
        raise OutputFolderError(f"refusing to export into {out}: it is {what}; pass a new "
                                f"folder, e.g. --out {Path(out) / 'tvmq-build'}.")
    if real.exists():
        if not real.is_dir():
            raise OutputFolderError(f"{out} is a file, not a folder; pass a new folder.")
        _check_replaceable(real, out, overwrite)
        parent = real.parent
    else:
        parent = real.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise OutputFolderError(f"cannot create {out}: {parent} is a file, not a folder.")
    _check_writable(parent, out)
    return path


def write_folder(out: str | os.PathLike, write: Callable[[Path], None], *,
                 overwrite: bool = False, build_products: Iterable[str] = ()) -> Path:
    """Call `write(tmp)` to fill a temporary folder, add the manifest (listing every file
    written plus `build_products`, the files its Makefile makes), give it the user's normal
    permissions and rename it to `out`. Returns `out`."""
    path = check_output_folder(out, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = None
    try:
        write(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        manifest = {"written_by": "tvmq", "files": files, "build_products": list(build_products)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _normal_permissions(tmp)
        check_output_folder(out, overwrite)  # nothing appeared meanwhile
        if path.exists() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            path.rename(old)
        tmp.rename(path)  # replaces an empty folder atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            old.rename(path)
        raise
    if old is not None:
        _remove_export(old)
    return path


def _owned_files(folder: Path) -> set[str] | None:
    """The files tvmq wrote into `folder` (with its manifest), or None if it has no manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("written_by") != "tvmq":
        return None
    return {MANIFEST, *manifest.get("files", ()), *manifest.get("build_products", ())}


def _foreign_files(folder: Path, owned: set[str]) -> list[str]:
    """Files and links in `folder` that `owned` does not list."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_symlink() or not p.is_dir())
    return [f for f in found if f not in owned]


def _check_replaceable(folder: Path, out, overwrite: bool) -> None:
    if not any(folder.iterdir()):
        return
    owned = _owned_files(folder)
    foreign = _foreign_files(folder, owned or set())
    if foreign or owned is None:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise OutputFolderError(f"{out} holds files tvmq did not write ({shown or 'folders'}); "
                                "pass a new or empty folder (tvmq never deletes your files).")
    if not overwrite:
        raise OutputFolderError(f"{out} holds an earlier tvmq export; pass {FORCE_HINT} to "
                                "replace it.")


def _check_writable(folder: Path, out) -> None:
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tvmq-probe.", dir=folder))
    except OSError as err:
        raise OutputFolderError(f"cannot write {out}: {folder} is not writable "
                                f"({err.strerror}).") from None


def _normal_permissions(folder: Path) -> None:
    """Folders 0777 and files 0666 minus the umask (mkdtemp makes 0700), executables kept."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o100
        p.chmod((0o777 if executable else 0o666) & ~umask)


def _remove_export(folder: Path) -> None:
    """Delete the files a replaced export's manifest lists, then its empty folders; keep (and
    warn about) anything else."""
    owned = _owned_files(folder) or set()
    for name in owned:
        p = folder / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    if any(folder.iterdir()):
        warnings.warn(f"kept {folder}: it holds files tvmq did not write", stacklevel=3)
    else:
        folder.rmdir()
