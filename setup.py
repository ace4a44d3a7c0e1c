import re
from pathlib import Path

from setuptools import find_packages, setup

# one place for the version: imgstor/__init__.py (`imgstor --version` prints it)
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    (Path(__file__).parent / "imgstor" / "__init__.py").read_text(), re.M)[1]

setup(
    name="imgstor",
    version=VERSION,
    description="VM disks on ZFS NAS servers, mapped to compute nodes over iSCSI "
                "(the Rocks img-storage commands, over SSH)",
    python_requires=">=3.11",
    packages=find_packages(include=["imgstor", "imgstor.*"]),
    install_requires=["fabric", "paramiko", "tabulate", "filelock"],
    extras_require={"test": ["pytest", "ruff", "mypy", "pexpect"]},
    entry_points={"console_scripts": [
        "imgstor=imgstor.cli:entry",
        "imgstorageadmin=imgstor.admin:main",
    ]},
)
