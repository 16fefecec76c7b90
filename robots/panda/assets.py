"""Where the Franka Panda MJCF fragments and meshes live, and the in-memory edits we make.

The model comes from the installed ``gymnasium-robotics`` package
(``gymnasium_robotics/envs/assets/kitchen_franka/franka_assets/``). Those files carry this
header: "Modified from the original source code at https://github.com/vikashplus/franka which
was originally written by Vikash Kumar and licensed under the Apache License" (Apache-2.0; the
package itself is MIT). Nothing is copied into this repository: the folder is found at run
time and the scene includes its files by absolute path. Two edits are made in memory to the
arm's body tree (``chain.xml``) before it is compiled:

* ``gravcomp="1"`` on every Panda body, so the position servos need no integral term to hold
  the arm against gravity (the real robot's controller compensates gravity too);
* a ``tcp`` site (tool centre point) between the finger pads, 2.5 cm beyond the package's
  ``end_effector`` site along the hand axis: the point that grasps and pushes.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re

PACKAGE = "gymnasium_robotics"
SUBDIR = os.path.join("envs", "assets", "kitchen_franka", "franka_assets")
TCP_OFFSET = 0.235  # m from the link7 frame along its z axis (end_effector site: 0.210)


def franka_assets_dir() -> str:
    """Absolute path of the installed ``franka_assets`` folder (assets.xml, chain.xml,
    actuator.xml, meshes/). Found without importing the package (its import is slow and
    prints a notice). Raises FileNotFoundError with an install hint when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Franka Panda model needs the '{PACKAGE}' package: pip install gymnasium-robotics")
    path = os.path.join(list(spec.submodule_search_locations)[0], SUBDIR)
    for name in ("assets.xml", "chain.xml", "actuator.xml", "meshes"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(f"Franka asset {name!r} not found under {path}; reinstall gymnasium-robotics")
    return path


@functools.lru_cache(maxsize=1)
def panda_chain_xml() -> str:
    """The package's ``chain.xml`` (the Panda body tree) with gravity compensation on every
    body and the ``tcp`` site added to ``panda0_link7``. Returns the XML text."""
    with open(os.path.join(franka_assets_dir(), "chain.xml"), encoding="utf-8") as f:
        text = f.read()
    text, n_bodies = re.subn(r"<body\s+name=\"panda0_", '<body gravcomp="1" name="panda0_', text)
    site = re.search(r"<site\s+name=['\"]end_effector['\"][^>]*/>", text)
    if n_bodies < 10 or site is None:
        raise RuntimeError("unexpected layout of gymnasium_robotics franka_assets/chain.xml "
                           "(Panda bodies or the end_effector site not found)")
    tcp = f"<site name='tcp' pos='0 0 {TCP_OFFSET}' size='0.006' euler='0 0 -0.785398' rgba='1 0.5 0 0' group='4'/>"
    return text[: site.end()] + tcp + text[site.end():]
