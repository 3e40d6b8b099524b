"""Forward kinematics from a URDF: the end-effector pose of a JointState, for robots that publish no pose.

The library was chosen by measurement (bench/fk.py, README End-effector policies): kinpy (pure Python on
numpy and scipy) computes a six-joint arm's tool pose in ~0.1 ms, within the 1 ms a JointState message
may cost, for 161 MB installed beyond numpy; Pinocchio (pin) is 40x faster and 392 MB (Boost, Assimp),
pytransform3d over a millisecond. All three agree within 1e-15.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from .errors import ConfigError


class Kinematics:
    """The serial chain from ``base`` (default: the URDF's root link) to ``tip``; ``joint_names`` are its movable
    joints in chain order, ``forward(q)`` the tip's (4, 4) pose in the base frame."""

    def __init__(self, urdf: str, tip: str, base: str = "", where: str = "urdf"):
        try:
            root = ET.fromstring(urdf)
        except ET.ParseError as e:
            raise ConfigError(f"{where}: not a URDF ({e})") from None
        links = [link.get("name") for link in root.iter("link")]
        for name, what in ((tip, "tip link"), (base, "base link")):
            if name and name not in links:
                raise ConfigError(f"{where}: the URDF has no {what} {name!r}; its links: {', '.join(links)}")
        import kinpy
        try:
            self.chain = kinpy.build_serial_chain_from_urdf(urdf, tip, base)
        except Exception as e:  # kinpy's own errors (a tip not below the base) are not ours to type
            raise ConfigError(f"{where}: no chain from {base or 'the root link'!r} to {tip!r}: "
                              f"{type(e).__name__}: {e}") from None
        self.joint_names = list(self.chain.get_joint_parameter_names())
        if not self.joint_names:
            raise ConfigError(f"{where}: no movable joint between {base or 'the root link'!r} and {tip!r}")

    def forward(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(self.chain.forward_kinematics(np.asarray(q, np.float64)).matrix(), np.float64)
