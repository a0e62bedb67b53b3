"""Real HTTP fakes of the vendor APIs (Mixpanel, Amplitude, Netmera) for connector tests.

The fakes themselves and their server base live in `include/demo/` (the demo's vendor sandboxes
are built on them; product code must not import tests/): `include.demo.fake_server` has the
fault API every fake shares. Here: the test audiences (`people.py`) and the test-only fakes.
"""

from include.demo.fake_amplitude import FakeAmplitude, FakeStorage
from include.demo.fake_mixpanel import SESSION_INVALID, FakeMixpanel, ProjectLimits
from tests.fakes.netmera import Delivery, FakeNetmera, NetmeraFault, push_outcome
from tests.fakes.people import make_members, make_rows
from tests.fakes.server import FakeServer, Fault, Recorded

__all__ = [
    "SESSION_INVALID",
    "Delivery",
    "FakeAmplitude",
    "FakeMixpanel",
    "FakeNetmera",
    "FakeServer",
    "FakeStorage",
    "Fault",
    "NetmeraFault",
    "ProjectLimits",
    "Recorded",
    "make_members",
    "make_rows",
    "push_outcome",
]
