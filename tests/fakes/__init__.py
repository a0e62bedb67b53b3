"""Real HTTP fakes of the vendor APIs (Mixpanel, Amplitude, Netmera) for connector tests.

See `include.demo.fake_server` for the fault API shared by every fake (Netmera's fake and the
server base live in `include/demo/`: the demo's Netmera sandbox is built on them).
"""

from tests.fakes.amplitude import FakeAmplitude, FakeStorage, make_rows
from tests.fakes.mixpanel import SESSION_INVALID, FakeMixpanel, ProjectLimits, make_members
from tests.fakes.netmera import Delivery, FakeNetmera, NetmeraFault, push_outcome
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
