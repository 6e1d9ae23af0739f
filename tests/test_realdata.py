"""Optional: the real DeiT-Tiny and ImageNet images in ../shared/realdata (skipped when absent)."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import realdata  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not realdata.available(), reason=realdata.missing_message())]


def test_real_deit_tiny_exports_with_parity_and_keeps_accuracy(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from vitedge.data import ImageRecord, ImageSet, iter_batches
    from vitedge.export import export_onnx
    from vitedge.models.load import load

    loaded = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
    assert loaded.card.labels[0] == "tench" and loaded.card.structure.num_heads == 3
    result = export_onnx(loaded, tmp_path / "deit", parity_data=realdata.IMAGES, parity_samples=16)
    assert result.parity.top1_agreement == 1.0 and result.parity.max_abs_diff < 1e-3
    labels = list(realdata.labels_by_path().items())[::5]  # 100 images
    images = ImageSet([ImageRecord(p, c) for p, c in labels], ["x"] * 1000, "realdata")
    session = ort.InferenceSession(str(tmp_path / "deit" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    hits = 0
    for batch, records in iter_batches(images, loaded.card.preprocessing, 50):
        predictions = session.run(None, {"input": batch})[0].argmax(1)
        hits += int(np.sum(predictions == np.array([r.label for r in records])))
    assert hits / len(labels) >= 0.7  # ~79% on the whole sample; a preprocessing slip drops it far
