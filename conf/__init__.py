"""brainbench's Hydra config tree, shipped inside the package as ``brainbench.conf`` (``pkg://brainbench.conf``)."""
