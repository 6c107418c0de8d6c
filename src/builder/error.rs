//! Why a builder refused to build.

use std::fmt;
use std::time::Duration;

use super::{MAX_SHARDS, MIN_SWEEP_INTERVAL};

/// Why a [`CacheBuilder`](crate::CacheBuilder) refused to build.
///
/// ```
/// use larder::{BuildError, Cache};
///
/// let err = Cache::<u32, u32>::builder().max_capacity(0).build().unwrap_err();
/// assert_eq!(err, BuildError::ZeroCapacity);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_capacity` was never set.
    MissingCapacity,
    /// `max_capacity(0)`: a cache that can hold nothing.
    ZeroCapacity,
    /// The shard count is not a power of two in `1..=MAX_SHARDS`.
    InvalidShards {
        /// The count that was asked for.
        shards: usize,
    },
    /// `background_sweep` with an interval below [`MIN_SWEEP_INTERVAL`].
    SweepIntervalTooShort {
        /// The interval that was asked for.
        interval: Duration,
    },
    /// The background sweeper's thread could not be started.
    SweeperNotStarted {
        /// What the operating system said.
        reason: String,
    },
    /// An [`Expiry`](crate::Expiry) together with `time_to_live` or `time_to_idle`: the
    /// `Expiry` alone decides lifetimes, so say it there.
    ConflictingExpiry,
    /// A [`refresh_after`](crate::CacheBuilder::refresh_after) that cannot
    /// work: zero, not shorter than the `time_to_live`, or on a cache that
    /// loads through a [`Store`](crate::Store).
    InvalidRefresh {
        /// What is wrong.
        reason: &'static str,
    },
    /// A write-back setting that cannot work (a zero batch size or queue, a
    /// `max_backoff` above a day).
    InvalidWriteBack {
        /// What is wrong.
        reason: &'static str,
    },
    /// The write-back flusher's thread could not be started.
    FlusherNotStarted {
        /// What the operating system said.
        reason: String,
    },
    /// `initial_capacity` asked for more room than could be allocated.
    InitialCapacityTooLarge {
        /// The entries asked for (at most the capacity).
        entries: usize,
    },
    /// More shards than capacity units: some shard could hold nothing.
    MoreShardsThanCapacity {
        /// The count that was asked for.
        shards: usize,
        /// The capacity it was asked with.
        capacity: u64,
    },
    /// [`max_entry_weight`](crate::CacheBuilder::max_entry_weight) above a
    /// shard's share of the capacity: above the capacity itself, or above
    /// the share of each of the [`shards`](crate::CacheBuilder::shards)
    /// asked for.
    EntryTooHeavy {
        /// The weight the cache was to take.
        weight: u64,
        /// The capacity it was asked with.
        capacity: u64,
        /// The shard count asked for, else 1 (the default count is lowered
        /// to hold the weight, down to one shard, so it fails only when the
        /// weight is above the capacity).
        shards: usize,
    },
    /// [`max_entry_weight`](crate::CacheBuilder::max_entry_weight) above 1
    /// without a [`weigher`](crate::CacheBuilder::weigher): every entry
    /// weighs 1, so the setting could only lower the shard count (down to one
    /// shard), never let a heavier entry in.
    EntryWeightWithoutWeigher {
        /// The weight asked for.
        weight: u64,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingCapacity => f.write_str("max_capacity must be set"),
            Self::ZeroCapacity => f.write_str("max_capacity must be at least 1"),
            Self::InvalidShards { shards } => write!(
                f,
                "shards must be a power of two from 1 to {MAX_SHARDS}, got {shards}"
            ),
            Self::SweepIntervalTooShort { interval } => write!(
                f,
                "background_sweep interval must be at least {MIN_SWEEP_INTERVAL:?}, got {interval:?}"
            ),
            Self::SweeperNotStarted { reason } => {
                write!(f, "the background sweeper could not start: {reason}")
            }
            Self::ConflictingExpiry => f.write_str(
                "an Expiry decides every lifetime: drop time_to_live / time_to_idle or fold them into it",
            ),
            Self::InvalidRefresh { reason } => write!(f, "invalid refresh_after: {reason}"),
            Self::InvalidWriteBack { reason } => write!(f, "invalid write-back settings: {reason}"),
            Self::FlusherNotStarted { reason } => {
                write!(f, "the write-back flusher could not start: {reason}")
            }
            Self::InitialCapacityTooLarge { entries } => write!(
                f,
                "room for {entries} entries could not be allocated: ask initial_capacity for less"
            ),
            Self::MoreShardsThanCapacity { shards, capacity } => {
                // The largest count that builds: a power of two within the capacity.
                let most = 1u64 << (*capacity).clamp(1, MAX_SHARDS as u64).ilog2();
                let noun = if most == 1 { "shard" } else { "shards" };
                write!(
                    f,
                    "{shards} shards cannot split a capacity of {capacity}: use at most {most} {noun}"
                )
            }
            Self::EntryTooHeavy {
                weight,
                capacity,
                shards,
            } => {
                if weight > capacity {
                    write!(
                        f,
                        "max_entry_weight {weight} is above the capacity {capacity}"
                    )
                } else {
                    // The most shards whose shares hold the weight.
                    // Clamped from below too: the fields are public, and a value
                    // made by hand may have a capacity of 0.
                    let most = 1u64 << (capacity / weight.max(&1)).clamp(1, MAX_SHARDS as u64).ilog2();
                    let noun = if most == 1 { "shard" } else { "shards" };
                    write!(
                        f,
                        "{shards} shards split a capacity of {capacity} into shares below max_entry_weight {weight}: use at most {most} {noun}"
                    )
                }
            }
            Self::EntryWeightWithoutWeigher { weight } => write!(
                f,
                "max_entry_weight {weight} without a weigher, where every entry weighs 1: set a weigher, or leave max_entry_weight out"
            ),
        }
    }
}

impl std::error::Error for BuildError {}
