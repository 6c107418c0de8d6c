//! Model tests that need crate internals (`validate`, the policy's order).

mod concurrent;
mod expiry_model;
mod model;
mod prefetch;
mod storage;
mod tags_model;
mod wheel_work;
