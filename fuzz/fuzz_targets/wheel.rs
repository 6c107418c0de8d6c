//! The timer wheel against a `BTreeMap` model: random schedules, cancels and
//! advances with small budgets, some left stopped part-way (a slot half
//! spilled, tokens waiting to be handed out) while more schedules and cancels
//! run; every token handed out must be due, an advance that finishes must
//! have handed out every token due, and the wheel's invariants must hold
//! after every call.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| larder::fuzz_wheel(data));
