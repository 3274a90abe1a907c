//! Recycling: when a worker that is still fine is replaced anyway.

use std::fmt;

/// Why a worker was recycled (replaced after a job although it could take another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecycleReason {
    /// It ran [`PoolConfig::max_jobs_per_worker`](crate::PoolConfig::max_jobs_per_worker)
    /// jobs.
    MaxJobs,
    /// Its memory in use after a job was over
    /// [`PoolConfig::max_memory`](crate::PoolConfig::max_memory).
    Memory {
        /// The bytes in use it was measured at.
        bytes: u64,
    },
}

impl RecycleReason {
    /// `max_jobs` or `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecycleReason::MaxJobs => "max_jobs",
            RecycleReason::Memory { .. } => "memory",
        }
    }
}

impl fmt::Display for RecycleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When to recycle, from the pool's settings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recycling {
    pub(crate) max_jobs: Option<u32>,
    pub(crate) max_memory: Option<u64>,
}

impl Recycling {
    /// Whether the memory has to be measured after each job.
    pub(crate) fn reads_memory(&self) -> bool {
        self.max_memory.is_some()
    }

    /// Whether a worker that has run `jobs` jobs and uses `memory` bytes now (`None`: not
    /// known) is recycled. Only the present counts: a worker that once used more and gave it
    /// back is kept.
    pub(crate) fn decide(&self, jobs: u32, memory: Option<u64>) -> Option<RecycleReason> {
        if self.max_jobs.is_some_and(|max| jobs >= max) {
            return Some(RecycleReason::MaxJobs);
        }
        match (self.max_memory, memory) {
            (Some(max), Some(bytes)) if bytes > max => Some(RecycleReason::Memory { bytes }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_after_max_jobs() {
        let r = Recycling {
            max_jobs: Some(3),
            max_memory: None,
        };
        assert_eq!(r.decide(2, None), None);
        assert_eq!(r.decide(3, None), Some(RecycleReason::MaxJobs));
    }

    #[test]
    fn recycles_on_current_memory_only_past_the_bound() {
        let r = Recycling {
            max_jobs: None,
            max_memory: Some(100),
        };
        assert!(r.reads_memory());
        assert_eq!(r.decide(1, Some(100)), None);
        assert_eq!(
            r.decide(1, Some(101)),
            Some(RecycleReason::Memory { bytes: 101 })
        );
        // Unknown memory is no reason.
        assert_eq!(r.decide(1, None), None);
    }

    #[test]
    fn nothing_set_never_recycles() {
        let r = Recycling::default();
        assert!(!r.reads_memory());
        assert_eq!(r.decide(u32::MAX, Some(u64::MAX)), None);
    }
}
