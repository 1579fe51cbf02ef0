"""Where the app runs, and the defaults that follow: ``local`` or ``cloud``.

``local`` is a laptop or a classroom server: the defaults the rest of the code was
written for. ``cloud`` is a small shared host such as Streamlit Community Cloud, which
gives an app about one to two CPU cores and little memory for everyone who opens it:

- one run trains at a time and at most two more wait (a longer queue would only
  promise visitors a start that comes an hour later);
- the Train page offers 10,000 training images and at most 10 epochs by default, so a
  run of any preset ends in minutes instead of hours (both can still be raised);
- fewer finished jobs and loaded models are kept in memory.

The profile is ``CIFAR_PROFILE`` (``cloud`` or ``local``) when set; otherwise ``cloud``
when the app looks like it runs on Streamlit Community Cloud, which checks repositories
out under ``/mount/src/<repository>`` and runs apps as ``appuser`` (home
``/home/appuser``). Neither is a documented interface, so ``CIFAR_PROFILE`` is the way
to be sure either way. Settings given explicitly (``CIFAR_MAX_JOBS``,
``CIFAR_MAX_QUEUED``, ``CIFAR_TORCH_THREADS``) win over the profile's defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ProfileName = Literal["local", "cloud"]
CLOUD_SOURCE_ROOT = Path("/mount/src")  # where Community Cloud checks out repositories
CLOUD_HOME = "/home/appuser"
PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    reason: str  # why this profile, in words (shown on the Train page)
    max_jobs: int  # runs training at once; 0 = as many as the machine allows (jobs.machine_slots)
    max_queued: int  # runs waiting for a slot; 0 refuses instead of queueing
    keep_finished: int  # finished jobs whose snapshots stay in memory
    default_subset: int  # training images the Train page offers; 0 = all
    max_default_epochs: int | None  # the Train page offers at most this many epochs; None = the preset's
    model_cache: int  # trained models kept loaded for Evaluate and Predict

    def default_epochs(self, preset_epochs: int) -> int:
        """The epochs the Train page starts with for a preset that plans ``preset_epochs``."""
        if self.max_default_epochs is None:
            return preset_epochs
        return min(preset_epochs, self.max_default_epochs)

    def default_training_images(self, available: int) -> int:
        """The Train page's starting subset (0 = all) given ``available`` training images."""
        if not self.default_subset or self.default_subset >= available:
            return 0
        return self.default_subset


def _local(reason: str) -> Profile:
    return Profile("local", reason, max_jobs=0, max_queued=60, keep_finished=50, default_subset=0,
                   max_default_epochs=None, model_cache=4)


def _cloud(reason: str) -> Profile:
    return Profile("cloud", reason, max_jobs=1, max_queued=2, keep_finished=10, default_subset=10_000,
                   max_default_epochs=10, model_cache=2)


def _under(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


def detect(environ: Mapping[str, str] | None = None, cwd: Path | None = None,
           project_dir: Path = PROJECT_DIR, cloud_root: Path = CLOUD_SOURCE_ROOT) -> Profile:
    """The profile for this process (arguments exist for tests)."""
    env = os.environ if environ is None else environ
    explicit = env.get("CIFAR_PROFILE", "").strip().lower()
    if explicit in ("cloud", "local"):
        maker = _cloud if explicit == "cloud" else _local
        return maker(f"CIFAR_PROFILE={explicit}")
    if explicit:
        log.warning("ignoring CIFAR_PROFILE=%r: use 'cloud' or 'local'", explicit)
    cwd = Path.cwd() if cwd is None else cwd
    for where in (project_dir, cwd):
        if _under(where, cloud_root):
            return _cloud(f"the app runs from {cloud_root} (Streamlit Community Cloud)")
    if env.get("HOME") == CLOUD_HOME and cloud_root.is_dir():
        return _cloud(f"HOME is {CLOUD_HOME} and {cloud_root} exists (Streamlit Community Cloud)")
    return _local("no sign of a cloud host")


def current_profile() -> Profile:
    """The profile in force now: cheap, read afresh on every call."""
    return detect()


def cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Cores allowed by a cgroup (v2) CPU quota, rounded, at least 1; None without a quota.

    ``os.cpu_count()`` counts the host's cores: in a container held to two of them by a
    quota, as cloud hosts do, a thread per host core would only queue for those two.
    """
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, int(int(quota) / int(period) + 0.5))
    except (OSError, ValueError, ZeroDivisionError):
        return None
