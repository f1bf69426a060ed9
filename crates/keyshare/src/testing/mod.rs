//! Test support shared by every crate that implements [`crate::Store`]: a fault-injecting
//! wrapper, the conformance suite and the model-based consistency test. Enabled by the
//! `testing` feature.

pub mod conformance;
pub mod fault;
pub mod hook;
#[cfg(target_os = "linux")]
pub mod memory;
pub mod model;

pub use fault::{Calls, Fault, FaultStore};
pub use hook::{Call, HookStore};
