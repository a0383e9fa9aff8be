//! cgroupfs: hierarchies, paths and what they identify. The only module
//! that reads cgroup files.

pub mod container;
pub mod hierarchy;
pub mod identity;
pub mod read;
pub mod stats;
pub mod v1;
pub mod v2;
