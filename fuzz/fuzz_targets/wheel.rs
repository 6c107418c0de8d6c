//! The timer wheel against a `BTreeMap` model: random schedules, cancels and
//! advances with small budgets; the same tokens must come due at each advance
//! (in deadline order, but for those found due as a slot is spilled), with the
//! wheel's invariants intact after every call.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| larder::fuzz_wheel(data));
