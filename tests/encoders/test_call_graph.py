"""A compiled call equals the incremental encoders: pooling matrix, embeddings, scores, the first pass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from exitflow.encoders.call_graph import CallGraph, pool_matrix
from exitflow.encoders.cnn import CNNEarlyExitEncoder, cnn_preset
from exitflow.encoders.fusion_grid import ExitGridFusion
from exitflow.scheduler.rules import entropy_of


@dataclass(frozen=True)
class S:
    kind: str
    exits: tuple[tuple[str, int], ...]


@pytest.mark.parametrize(("h", "w", "p"), [(7, 7, 4), (14, 14, 4), (4, 4, 4), (5, 3, 2)])
def test_pool_matrix_is_adaptive_pool(h: int, w: int, p: int) -> None:
    x = torch.randn(3, 5, h, w)
    want = torch.nn.functional.adaptive_avg_pool2d(x, p).flatten(2)
    got = torch.matmul(x.flatten(2), pool_matrix(h, w, p))
    torch.testing.assert_close(got, want)


def _parts() -> tuple[dict[str, CNNEarlyExitEncoder], ExitGridFusion]:
    torch.manual_seed(0)
    encs = {m: CNNEarlyExitEncoder(cnn_preset(m)).eval() for m in ("image", "audio")}
    for e in encs.values():
        e.set_temperatures([1.5, 1.2, 0.9])
        e.fold_batchnorm()
    fusion = ExitGridFusion({m: e.embed_dims for m, e in encs.items()}, 10).eval()
    return encs, fusion


def test_call_equals_incremental_steps() -> None:
    encs, fusion = _parts()
    x = {"image": torch.randn(4, 1, 28, 28), "audio": torch.randn(4, 1, 112, 112)}
    steps = [S("exit", (("image", 0),)), S("exit", (("image", 2),)), S("exit", (("audio", 0),)),
             S("check", (("image", 2), ("audio", 0)))]
    graph = CallGraph(encs, fusion, steps, {}, "entropy", hidden_out=["audio"], embedding_out=["image"]).eval()
    assert graph.input_names == ["x_image", "x_audio", "thr"]
    thr = torch.full((4,), -1.0, dtype=torch.float64)  # nothing passes
    with torch.no_grad():
        pick, passed, preds, scores, h_audio, e_image = graph(x["image"], x["audio"], thr)
        # the reference: incremental steps (exit 1 of image left out: its block runs, its head does not)
        st = encs["image"].start(x["image"])
        out0 = encs["image"].step(st)
        st.next_exit = 2
        out2 = encs["image"].step(st)
        sa = encs["audio"].start(x["audio"])
        a0 = encs["audio"].step(sa)
        fused = fusion.fuse_exits({"image": out2, "audio": a0}).logits
    torch.testing.assert_close(e_image, out2.embedding)
    torch.testing.assert_close(h_audio, sa.hidden)
    for k, logits in enumerate([out0.logits, out2.logits, a0.logits, fused]):
        probs = torch.softmax(logits.float(), dim=-1)
        for b in range(4):
            assert scores[b, k].item() == pytest.approx(entropy_of(probs[b].tolist()), abs=1e-6)
    assert passed.tolist() == [False] * 4 and pick.tolist() == [3] * 4  # none passed: the last step answers
    torch.testing.assert_close(preds[:, 3], fused.argmax(dim=-1))
    # thresholds that pass at step 2 only: first is 2 and the class is audio exit 0's
    thr = torch.tensor([-1.0, -1.0, 2.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        pick, passed, preds, *_ = graph(x["image"], x["audio"], thr)
    assert pick.tolist() == [2] * 4 and passed.all()
    torch.testing.assert_close(preds[:, 2], a0.logits.argmax(dim=-1))


def test_continuing_call_takes_hidden_and_embedding() -> None:
    encs, fusion = _parts()
    steps = [S("exit", (("audio", 1),)), S("check", (("image", 2), ("audio", 1))), S("final", (("image", 2), ("audio", 1)))]
    graph = CallGraph(encs, fusion, steps, {"image": 2, "audio": 0}, "max_prob")
    assert graph.input_names == ["h_audio", "e_image", "thr"]
    with pytest.raises(ValueError, match="does not run"):
        CallGraph(encs, fusion, steps, {"image": 2, "audio": 0}, "max_prob", hidden_out=["image"])
    with pytest.raises(ValueError, match="neither this call nor an earlier one"):
        CallGraph(encs, fusion, steps, {"audio": 0}, "max_prob")
    with pytest.raises(ValueError, match="entropy or max_prob"):
        CallGraph(encs, fusion, steps, {"image": 2, "audio": 0}, "patience")
