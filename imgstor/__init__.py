"""imgstor: VM disks on ZFS NAS servers, handed to compute nodes over iSCSI."""
__version__ = "0.1.0"
