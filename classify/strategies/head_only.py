"""``fine_tune: none``: the frozen base and the head as the head phase left them."""

from __future__ import annotations

from detcrop.classify.model import compose_model
from detcrop.classify.strategies import MemberJob, Outcome, flip_averaged


def run(job: MemberJob) -> Outcome:
    """The composed model computes exactly head(features), so val is measured on the cached features."""
    val = job.examples.val
    probabilities = flip_averaged(lambda features: job.head(features, training=False),
                                  {view: job.features[view][val] for view in ("orig", "flip") if view in job.features},
                                  job.config.tta_flip)
    model = compose_model(job.config.input_size, job.extractor.preprocessing, job.extractor.base, job.head)
    return Outcome(model, probabilities, job.examples)
