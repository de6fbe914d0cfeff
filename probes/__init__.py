"""probes: where in an OLMo model the forget-set knowledge lives, and what an edit did to it.

Hidden states are read through plain torch hooks (``repedit.layers``), or through nnsight with
``collect(..., via="nnsight")`` (the ``probes`` extra; imported only inside the function that traces);
steering uses plain torch hooks so that it also acts inside ``generate``. Every result is a small dataclass
with ``to_json``/``from_json`` and ``save``/``load``.

>>> from probes import collect, probe_layers, norm_stats, logit_lens, steer
>>> forget, retain = collect(model, tok, forget_docs), collect(model, tok, retain_docs)
>>> result = probe_layers(forget, retain, "forget vs retain", "forget", "retain")
>>> with steer(model, result.best().layer, result.direction(result.best().layer), scale=-result.best().gap):
...     model.generate(ids)
"""

from probes.collect import Activations, collect, collect_ids, layer_batches, pool
from probes.linear import LayerProbe, ProbeResult, probe_layers
from probes.logit_lens import LensResult, LensRow, lens_logits, logit_lens
from probes.norms import NormStats, norm_stats, rmu_sequences, token_norm_stats
from probes.report import probe_report
from probes.shift import LayerShift, cosine_to, layer_shift
from probes.steering import ablate, edit_outputs, steer
from probes.suggest import RMUSuggestion, suggest_rmu

__all__ = [
    "Activations", "LayerProbe", "LayerShift", "LensResult", "LensRow", "NormStats", "ProbeResult",
    "RMUSuggestion", "ablate", "collect", "collect_ids", "cosine_to", "edit_outputs", "layer_batches",
    "layer_shift", "lens_logits", "logit_lens", "norm_stats", "pool", "probe_layers", "probe_report",
    "rmu_sequences", "steer", "suggest_rmu", "token_norm_stats",
]
