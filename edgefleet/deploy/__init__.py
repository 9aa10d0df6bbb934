"""Deploying to a device: verified uploads and the per-device lock."""
from edgefleet.deploy.lock import DeviceLock, LockHolder, break_lock, read_holder
from edgefleet.deploy.remote_fs import remote_free_bytes, remote_sha256
from edgefleet.deploy.upload import UploadResult, file_sha256, upload_verified

__all__ = [
    "DeviceLock", "LockHolder", "UploadResult", "break_lock", "file_sha256", "read_holder",
    "remote_free_bytes", "remote_sha256", "upload_verified",
]
