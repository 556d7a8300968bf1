"""Warren's public Python API: what an application imports to extend Warren.

Everything under ``shared`` and ``services`` is internal and may change; what this
package exports is the contract, documented in docs/extending.md.
"""

from __future__ import annotations

from warren.jobs import ArgsError, Job, JobContext, Param

__all__ = ["ArgsError", "Job", "JobContext", "Param"]
