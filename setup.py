from setuptools import find_packages, setup

setup(
    name="imgstor",
    version="0.1.0",
    description="VM disks on ZFS NAS servers, mapped to compute nodes over iSCSI "
                "(the Rocks img-storage commands, over SSH)",
    python_requires=">=3.11",
    packages=find_packages(include=["imgstor", "imgstor.*"]),
    install_requires=["fabric", "paramiko", "tabulate", "filelock"],
    extras_require={"test": ["pytest", "ruff", "mypy"]},
    entry_points={"console_scripts": [
        "imgstor=imgstor.cli:main",
        "imgstorageadmin=imgstor.admin:main",
    ]},
)
