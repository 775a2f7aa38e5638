"""Live PyTorch models through ``lstm_doctor.diagnose``: hooks, parity, file route, broken twins."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lstm_doctor  # noqa: E402

CREATED = "2026-01-01T00:00:00+00:00"


def pin_gates(lstm: nn.Module) -> None:
    """the seed defect scaled to a small H: weights with a positive mean, so that the
    recurrent term is ≈ 25 per gate as there (mean 0.1 at H = 256): every gate saturates."""
    gen = torch.Generator().manual_seed(1)
    mean = 25.0 / lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("weight"):
                p.copy_(mean + 0.05 * torch.randn(p.shape, generator=gen))


class EmbedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 12)
        self.rnn = nn.LSTM(12, 24, batch_first=True)
        self.out = nn.Linear(24, 3)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return self.out(y[:, -1])

    def front(self, tokens):
        return self.emb(tokens).numpy(), "btd", None


class ConvLSTM(nn.Module):
    """Conv1d over (batch, channels, length), then time-major for a default (batch_first=False) LSTM."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(6, 10, 3, padding=1)
        self.rnn = nn.LSTM(10, 16)

    def forward(self, x):
        feats = torch.relu(self.conv(x)).permute(2, 0, 1)  # (B, C, L) -> (L, B, C)
        y, (h, c) = self.rnn(feats)
        return h[-1]

    def front(self, x):
        return torch.relu(self.conv(x)).permute(2, 0, 1).numpy(), "tbd", None


class PackedBiLSTM(nn.Module):
    """A 2-layer bidirectional LSTM over packed, unsorted sequences."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.rnn = nn.LSTM(8, 12, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.encoder.rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(y, batch_first=True)[0]

    def front(self, x, lengths):
        return x.numpy(), "btd", lengths.numpy()


class CellLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(8, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):  # x (T, B, D)
        h = c = torch.zeros(x.shape[1], 16)
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
        return self.head(h)

    def front(self, x):
        return x.numpy(), "tbd", None


def make(kind: str):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if kind == "embed":
        return EmbedLSTM(), "rnn", (torch.randint(0, 40, (24, 18), generator=gen),)
    if kind == "conv":
        return ConvLSTM(), "rnn", (torch.randn(20, 6, 25, generator=gen),)
    if kind == "packed":
        lengths = torch.randint(4, 17, (20,), generator=gen)
        lengths[0] = 16
        return PackedBiLSTM(), "encoder.rnn", (torch.randn(20, 16, 8, generator=gen), lengths)
    return CellLoop(), "cell", (torch.randn(14, 20, 8, generator=gen),)


KINDS = ["embed", "conv", "packed", "cell"]


def comparable(findings):
    return [{k: v for k, v in f.items() if k != "module"} for f in findings]


@pytest.mark.parametrize("kind", KINDS)
def test_parity_and_same_findings_as_the_file(kind, tmp_path):
    model, path, batch = make(kind)
    report = lstm_doctor.diagnose(model, *batch, created=CREATED)
    assert report.modules == [path]
    check = report.parity[path]
    assert check["ok"] and check["max_abs_diff"] <= 1e-5 and check["values"] > 0
    assert check["sequences"] == (batch[0].shape[1] if kind == "cell" else batch[0].shape[0])
    assert any("capture parity" in n for n in report.reports[path]["model"]["notes"])
    # the file route: the saved state_dict, the front end's output computed here
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with torch.no_grad():
        x, layout, lengths = model.front(*batch)
    from_file = lstm_doctor.diagnose(
        str(tmp_path / "model.pt"), inputs=x, layout=layout, lengths=lengths,
        layer_prefix=path + ".", created=CREATED,
    )
    assert comparable(report.findings) == comparable(from_file.findings)
    live, saved = report.reports[path], next(iter(from_file.reports.values()))
    assert live["summary"]["headline"] == saved["summary"]["headline"]


@pytest.mark.parametrize("kind", KINDS)
def test_broken_twin_is_flagged(kind):
    model, path, batch = make(kind)
    healthy = lstm_doctor.diagnose(model, *batch)
    assert healthy.exit_code == 0, [f["code"] for f in healthy.findings if f["severity"] == "error"]
    lstm = dict(model.named_modules())[path]
    pin_gates(lstm)
    broken = lstm_doctor.diagnose(model, *batch)
    assert broken.exit_code == 1
    assert "W101" in {f["code"] for f in broken.findings}
    sat = broken.metrics()[f"{path}/saturated_f"]
    assert sat > 0.2 and sat > 5 * healthy.metrics()[f"{path}/saturated_f"]
    assert all(f["module"] == path for f in broken.findings)
    assert broken.parity[path]["ok"]


def test_packed_lengths_and_unsorted_order_are_kept():
    model, path, (x, lengths) = make("packed")
    report = lstm_doctor.diagnose(model, x, lengths)
    inputs = report.reports[path]["inputs"]
    assert inputs["lengths_given"] and inputs["sequences"] == 20 and inputs["T"] == 16
    layers = report.reports[path]["model"]["layers"]
    assert [layer["directions"] for layer in layers] == [["fwd", "rev"], ["fwd", "rev"]]
    assert layers[1]["D"] == 24


def test_constant_initial_state_is_used_and_per_sequence_state_is_refused():
    torch.manual_seed(0)
    rnn = nn.LSTM(5, 7)
    x = torch.randn(9, 4, 5)
    h0 = torch.full((1, 4, 7), 0.3)
    c0 = torch.full((1, 4, 7), -0.2)
    report = lstm_doctor.diagnose(rnn, x, (h0, c0))
    assert report.parity["model"]["ok"]
    assert any("h0 and c0" in n for n in report.reports["model"]["model"]["notes"])
    report = lstm_doctor.diagnose(rnn, x, (torch.randn(1, 4, 7), c0))
    assert report.reports == {} and "differs between the sequences" in report.skipped["model"]


def test_layers_and_scoped_select():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.LSTM(4, 8)
            self.b = nn.LSTM(8, 8)

        def forward(self, x):
            return self.b(self.a(x)[0])[0]

    torch.manual_seed(0)
    model = Two()
    pin_gates(model.a)
    pin_gates(model.b)
    x = torch.randn(10, 6, 4)
    both = lstm_doctor.diagnose(model, x)
    assert both.modules == ["a", "b"]
    assert {f["module"] for f in both.findings if f["code"] == "W101"} == {"a", "b"}
    only_b = lstm_doctor.diagnose(model, x, layers="b")
    assert only_b.modules == ["b"]
    scoped = lstm_doctor.diagnose(model, x, ignore=["a:W1"])
    assert {f["module"] for f in scoped.findings if f["code"].startswith("W1")} == {"b"}
    with pytest.raises(lstm_doctor.api.UserError):
        lstm_doctor.diagnose(model, x, layers="decoder.*")


def test_training_mode_is_restored_and_dropout_is_off_during_capture():
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)
            self.rnn = nn.LSTM(4, 6, dropout=0.5, num_layers=2)

        def forward(self, x):
            return self.rnn(self.drop(x))[0]

    wrap = Wrap().train()
    report = lstm_doctor.diagnose(wrap, torch.randn(8, 5, 4))
    assert report.parity["rnn"]["ok"]
    assert wrap.training and wrap.rnn.training and wrap.drop.training


def test_report_renders(tmp_path):
    model, path, batch = make("embed")
    report = lstm_doctor.diagnose(model, *batch)
    html = report.to_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == html and "<html" in html
    assert "<iframe srcdoc=" in report._repr_html_() and "Findings" in report._repr_html_()
    import json

    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data["model"]["name"] == path and data["summary"]["exit_code"] == report.exit_code
    import jsonschema

    from lstm_doctor.report import load_schema

    jsonschema.Draft202012Validator(load_schema()).validate(data)  # a live report is a CLI report
    assert "capture parity" in str(report)
    from rich.text import Text

    assert isinstance(report.__rich__(), Text)


def test_not_a_model_is_a_one_line_error():
    with pytest.raises(lstm_doctor.api.UserError, match="torch.nn.Module"):
        lstm_doctor.diagnose(object(), np.zeros((2, 3, 4)))
    with pytest.raises(lstm_doctor.api.UserError, match="no nn.LSTM"):
        lstm_doctor.diagnose(nn.Linear(3, 3), torch.zeros(2, 3))
