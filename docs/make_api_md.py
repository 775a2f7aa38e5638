"""Write docs/api.md from the docstrings of the public API (the docstrings are the reference).

    python docs/make_api_md.py          # rewrite docs/api.md
    python docs/make_api_md.py --check  # exit 1 when docs/api.md is out of date (tests run this)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lstm_doctor

HEADER = """# Python API reference

Generated from the docstrings by `python docs/make_api_md.py`; do not edit by hand.

```python
import lstm_doctor
report = lstm_doctor.diagnose(model, batch)          # a torch.nn.Module or keras.Model and what it takes
report.findings, report.exit_code, report.to_json(), report.to_html("r.html")
lstm_doctor.diagnose("encoder.pt", inputs=x)         # a model file: the CLI's job
```
"""


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(name: str, obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        sig = "(...)"
    return f"```python\n{name}{sig}\n```"


def render() -> str:
    from lstm_doctor import api, callbacks

    keras_doc = inspect.getsource(callbacks._keras_callback_class)
    keras_doc = keras_doc.split('"""', 2)[1]
    parts = [HEADER, "## `lstm_doctor.api`\n", _doc(api), "", "### `diagnose`\n", _signature("diagnose", api.diagnose),
             "", _doc(api.diagnose), "", "### `Report`\n", _doc(api.Report), ""]
    for name, member in api.Report.__dict__.items():
        if name.startswith("__") and name not in ("__str__",) or name.startswith("_") and name != "_repr_html_":
            continue
        target = member.fget if isinstance(member, property) else member
        if not callable(target) or not target.__doc__:
            continue
        label = f"Report.{name}" + ("" if isinstance(member, property) else str(inspect.signature(target)))
        parts += [f"- `{label}`: " + " ".join(_doc(target).split())]
    parts += ["", "## `lstm_doctor.callbacks`\n", _doc(callbacks), "", "### `TorchWatcher`\n",
              _signature("TorchWatcher", callbacks.TorchWatcher.__init__).replace("(self, ", "("), "",
              _doc(callbacks.TorchWatcher), "", "- `TorchWatcher.step(step) -> bool`: "
              + " ".join(_doc(callbacks.TorchWatcher.step).split()), "", "### `KerasCallback`\n",
              inspect.cleandoc(keras_doc), "", "### `Check`\n", _doc(callbacks.Check), "",
              "### `LSTMDoctorWarning`\n", _doc(callbacks.LSTMDoctorWarning), ""]
    from lstm_doctor import live
    from lstm_doctor.live import keras as live_keras
    from lstm_doctor.live import torch as live_torch

    parts += ["## How live models are read\n", "### PyTorch (`lstm_doctor.live.torch`)\n", _doc(live_torch), "",
              "### Keras (`lstm_doctor.live.keras`)\n", _doc(live_keras), "", "### Parity\n", _doc(live.parity), ""]
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    target = Path(__file__).with_name("api.md")
    text = render()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is out of date: run python docs/make_api_md.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
