"""The pyfunc wrapper of a published version: ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")``
imports this module (``loader_module`` in the version's ``MLmodel``) and calls ``_load_pyfunc`` with
the safetensors checkpoint, which it loads through the model's spec exactly as Lethe's replicas do
(``app.ml.checkpoint.load_checkpoint``: sha256 checked against ``lethe.json``, spec from the
checkpoint's own header), so it predicts what a replica predicts on the same inputs.

Needs Lethe (and the spec's plugin) installed where the model is loaded; MLflow loads it with
``mlflow-skinny`` (``pip install 'lethe[mlflow]'``). Inputs: a list of feature dicts, one dict, or a
pandas DataFrame (one row per input); output: ``[{"label", "probability"}]`` per input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS, INFO = "weights.safetensors", "lethe.json"


def mlmodel_yaml(*, version: int, sha256: str, spec: str, created: str, model_uuid: str) -> str:
    """The ``MLmodel`` file (YAML; written by hand: JSON-compatible scalars only)."""
    import platform

    return "\n".join([
        "artifact_path: model",
        "flavors:",
        "  python_function:",
        "    loader_module: app.publish.pyfunc",
        f"    data: {WEIGHTS}",
        f"    python_version: {platform.python_version()}",
        "lethe:",
        f"  version: {version}",
        f"  sha256: {sha256}",
        f"  spec: {json.dumps(spec)}",
        f"model_uuid: {model_uuid}",
        f"utc_time_created: '{created}'",
        "",
    ])


class LethePyfunc:
    def __init__(self, spec: Any, model: Any, meta: dict[str, Any], version: int | None) -> None:
        self.spec, self.model, self.meta, self.version = spec, model, meta, version

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from app.ml.train import predict

        if hasattr(model_input, "to_dict"):  # a pandas DataFrame
            items = model_input.to_dict(orient="records")
        elif isinstance(model_input, dict):
            items = [model_input]
        else:
            items = list(model_input)
        features = [self.spec.validate_input(item) for item in items]
        return [{"label": label, "probability": p}
                for label, p in predict(self.spec, self.model, self.meta, features, device="cpu")]


def _load_pyfunc(data_path: str) -> LethePyfunc:
    from app.ml.checkpoint import load_checkpoint, read_meta
    from app.ml.specs import get_spec

    weights = Path(data_path)
    if weights.is_dir():
        weights = weights / WEIGHTS
    info_file = weights.parent / INFO
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    spec = get_spec(info.get("spec") or read_meta(weights)["spec"])
    model, meta, _ = load_checkpoint(weights, spec, expected_sha256=info.get("sha256"))
    return LethePyfunc(spec, model, meta, info.get("version"))
