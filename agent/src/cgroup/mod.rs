//! cgroupfs: hierarchies, paths and what they identify. The only module
//! that reads cgroup files.

pub mod hierarchy;
pub mod identity;
