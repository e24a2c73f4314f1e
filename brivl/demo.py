"""The example queries of the main job (``python -m index demo``) and of the generation demo
(``python -m diffusion demo``): one per m9 language, and three outside m9."""
from __future__ import annotations

EXAMPLE_QUERIES = [
    ("en", "cat face"), ("zh", "猫"), ("es", "pizza"), ("fr", "cœur rouge"), ("ru", "собака"),
    ("ar", "شمس"), ("ja", "桜"), ("ko", "자동차"), ("it", "luna"),
]
# three languages outside m9 (three scripts): answered well only by a tower that learnt them
# (models/altclip-emoji-all, configs/altclip-distill-all.yaml); the m9 models show what they do without
OUTSIDE_M9_QUERIES = [("de", "roter Apfel"), ("hi", "बिल्ली"), ("th", "หัวใจสีแดง")]
DEMO_QUERIES = EXAMPLE_QUERIES + OUTSIDE_M9_QUERIES
