import os

from hypothesis import HealthCheck, settings

# "ci" (default) keeps the normal run short; "long" is for fuzzing sessions:
#   pytest tests/ --hypothesis-profile=long
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
