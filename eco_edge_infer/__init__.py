"""The decorator API of ecoserve under the name the EcoEdgeInfer paper uses.

import eco_edge_infer

@eco_edge_infer.inference_method
def run_inference(batch):
    return model(batch)

Only re-exports ``ecoserve.decorator`` and the engine's settings.
"""

from ecoserve.core.assembly import EngineSettings
from ecoserve.decorator import InferenceMethod, inference_method

__all__ = ["EngineSettings", "InferenceMethod", "inference_method"]
